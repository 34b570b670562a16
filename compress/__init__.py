"""compress: model-compression techniques behind one registry, `get(name).apply(model, ctx)`.

A name is `base` or `base@value` (e.g. `int8_static`, `prune_l1@0.5`, `svd@0.9`), optionally
followed by more stages, each applied to the model the one before made (compress/pipeline.py):
a technique (`gptq@32+gguf_q4_1`) or a recovery: `+ft` (the caller's fine-tune, keeping every
zero the technique made), `+lora` (a LoRA adapter trained by that fine-tune) or `+qlora` (the
same beside a frozen quantized model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from compress.base import Compressed, Context, Technique, Unsupported
from compress.lowrank import lora, svd
from compress.pipeline import then, with_recovery
from compress.prune import activation_aware, channels, magnitude, mlp
from compress.quant import bnb, calibrated, cast, dynamic, gptq, static, weight_only
from compress.recover import RECOVERIES
from compress.runtime import export, llamacpp, openvino

__all__ = ["Compressed", "Context", "Technique", "Unsupported", "get", "names"]


@dataclass(frozen=True)
class _Entry:
    family: str
    real_on: tuple[str, ...]  # devices where it runs for real
    make: Callable  # the transform, or, when `param` is set, a factory taking its value
    param: str | None = None
    kernel: str = ""  # the operators that prove a real low-bit execution (compress/kernels.py)


# The kernels: torch's quantized engine; bitsandbytes' own ops on its packed weights; ONNX
# Runtime's integer nodes after its graph optimizations.
_TORCH_INT8 = r"^quantized::"
_BNB_4BIT = r"^bitsandbytes::(gemv_4bit|dequantize_4bit)$"
_BNB_INT8 = r"^bitsandbytes::int8_(linear_matmul|scaled_mm|mixed_scaled_mm)$"
_TORCHAO_INT4 = r"^aten::_weight_int4pack_mm_for_cpu$"
_INT_MM = r"^aten::_int_mm$"  # torch's int8 x int8 -> int32 matmul (oneDNN on the CPU)
_ORT_INT8 = r"^(QLinear\w+|ConvInteger|MatMulInteger|DynamicQuantizeMatMul|QGemm)$"

_REGISTRY: dict[str, _Entry] = {
    "int8_dynamic": _Entry("quantization", ("cpu",), dynamic.int8_dynamic,
                           kernel=r"^quantized::linear_dynamic$"),
    "int8_static": _Entry("quantization", ("cpu",), static.int8_static, kernel=_TORCH_INT8),
    "int8_pt2e": _Entry("quantization", ("cpu",), static.int8_pt2e,
                        kernel=r"^onednn::q(conv|linear)"),
    "fp16": _Entry("quantization", ("cuda",), cast.to_dtype(torch.float16)),
    "bf16": _Entry("quantization", cast.bf16_real_on(), cast.to_dtype(torch.bfloat16)),
    "int8_weight": _Entry("quantization", (), weight_only.int8_weight),
    "int4_weight": _Entry("quantization", (), weight_only.int4_weight, "group"),
    "int4_bf16": _Entry("quantization", ("cpu",), weight_only.int4_bf16, "group",
                        kernel=_TORCHAO_INT4),
    "int8_bf16": _Entry("quantization", ("cpu",), weight_only.int8_bf16,
                        kernel=r"^aten::_weight_int8pack_mm$"),
    "hqq_bf16": _Entry("quantization", ("cpu",), weight_only.hqq_bf16, "group",
                       kernel=_TORCHAO_INT4),
    "awq": _Entry("quantization", ("cpu",), calibrated.awq, "group", kernel=_TORCHAO_INT4),
    "gptq": _Entry("quantization", ("cpu",), gptq.gptq, "group", kernel=_TORCHAO_INT4),
    "w8a8": _Entry("quantization", ("cpu",), calibrated.w8a8, kernel=_INT_MM),
    "smoothquant": _Entry("quantization", ("cpu",), calibrated.smoothquant, "alpha",
                          kernel=_INT_MM),
    "bnb_int8": _Entry("quantization", ("cpu", "cuda"), bnb.bnb("int8"), kernel=_BNB_INT8),
    "bnb_nf4": _Entry("quantization", ("cpu", "cuda"), bnb.bnb("nf4"), kernel=_BNB_4BIT),
    "bnb_fp4": _Entry("quantization", ("cpu", "cuda"), bnb.bnb("fp4"), kernel=_BNB_4BIT),
    "prune_l1": _Entry("pruning", (), magnitude.prune_l1, "sparsity"),
    "prune_global": _Entry("pruning", (), magnitude.prune_global, "sparsity"),
    "prune_channels": _Entry("pruning", ("cpu", "cuda"), channels.prune_channels, "sparsity"),
    "prune_mlp": _Entry("pruning", ("cpu", "cuda"), mlp.prune_mlp, "sparsity"),
    "wanda": _Entry("pruning", (), activation_aware.wanda, "sparsity"),
    "wanda_2of4": _Entry("pruning", (), activation_aware.wanda_2of4),
    "sparsegpt": _Entry("pruning", (), activation_aware.sparsegpt, "sparsity"),
    "sparsegpt_2of4": _Entry("pruning", (), activation_aware.sparsegpt_2of4),
    "svd": _Entry("low-rank", ("cpu", "cuda"), svd.svd, "energy"),
    "lora": _Entry("low-rank", ("cpu", "cuda"), lora.lora),
    "torchscript": _Entry("export", ("cpu",), export.torchscript),
    "onnx": _Entry("export", ("cpu",), export.onnx),
    "onnx_int8": _Entry("export", ("cpu",), export.onnx_int8, kernel=_ORT_INT8),
    "onnx_int4": _Entry("export", ("cpu",), export.onnx_int4, "block",
                        kernel=r"^MatMulNBits$"),
    "openvino": _Entry("export", ("cpu",), openvino.openvino),
    "openvino_int8": _Entry("export", ("cpu",), openvino.openvino_int8, kernel=openvino.KERNEL),
    "openvino_int8_weight": _Entry("export", ("cpu",), openvino.openvino_int8_weight,
                                   kernel=openvino.WEIGHT_KERNEL),
    "openvino_int4_weight": _Entry("export", ("cpu",), openvino.openvino_int4_weight, "group",
                                   kernel=openvino.WEIGHT_KERNEL),
    **{f"gguf_{ftype}": _Entry("quantization", ("cpu",), llamacpp.gguf(ftype),
                               kernel=llamacpp.KERNEL) for ftype in llamacpp.FTYPES},
}


def names() -> list[str]:
    """The base names of every registered technique."""
    return sorted(_REGISTRY)


def get(name: str) -> Technique:
    """The technique called `name`, e.g. `int8_static`, `prune_global@0.8+ft`, `bnb_nf4+qlora`,
    `gptq@32+gguf_q4_1`."""
    first, *stages = name.split("+")
    technique = _single(first, name)
    for stage in stages:
        if stage in RECOVERIES:
            technique = with_recovery(technique, stage)
        elif stage.partition("@")[0] in _REGISTRY:
            technique = then(technique, _single(stage, name))
        else:
            raise KeyError(f"unknown stage '+{stage}' in {name!r}: a stage after the first is a "
                           f"recovery ({', '.join('+' + r for r in RECOVERIES)}) or a technique "
                           f"({', '.join(names())})")
    return technique


def _single(spec: str, name: str) -> Technique:
    """One stage of `name`: `base` or `base@value`."""
    base, at, value = spec.partition("@")
    entry = _REGISTRY.get(base)
    if entry is None:
        raise KeyError(f"unknown technique {base!r} in {name!r}; known: {', '.join(names())}")
    if bool(entry.param) != bool(at):
        form = f"{base}@<{entry.param}>" if entry.param else base
        raise KeyError(f"technique {spec!r} in {name!r} is malformed: write it as {form}")
    if entry.param:
        try:
            transform = entry.make(float(value))
        except ValueError as err:
            raise KeyError(f"technique {spec!r} in {name!r}: {err}") from err
    else:
        transform = entry.make
    return Technique(spec, entry.family, entry.real_on, transform, transform.__doc__ or "",
                     entry.kernel)
