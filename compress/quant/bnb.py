"""bitsandbytes LLM.int8, NF4 and FP4, the way users apply them: transformers' BitsAndBytesConfig.

Every transformers model inside the given model (the model itself, or e.g. the encoder of a
sentence-embedding wrapper) is saved and loaded back with the quantization config, so the
result is exactly what `from_pretrained(..., quantization_config=...)` gives a user. Compute
stays in fp32, so the cell measures the weight format alone. bitsandbytes 0.50 runs these
layers on the CPU too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.registry import register

# The bitsandbytes layer classes of each format (transformers builds them by name).
LAYERS = {"4bit": ("Linear4bit", "LinearNF4", "LinearFP4"), "int8": ("Linear8bitLt",)}
FORMATS = {
    "int8": {"load_in_8bit": True},
    "nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
}


def _pretrained_models(model: nn.Module) -> list[tuple[nn.Module | None, str, nn.Module]]:
    """(parent, attribute, module) of each outermost transformers model; parent None = root."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return [(None, "", model)]
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, PreTrainedModel) and not isinstance(parent, PreTrainedModel):
                found.append((parent, name, child))
    return found


def bnb(fmt: str) -> Callable[[nn.Module, Context], Compressed]:
    options = FORMATS[fmt]

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as err:
            raise Unsupported(f"bnb_{fmt} needs bitsandbytes and transformers: "
                              "pip install bitsandbytes transformers") from err
        targets = _pretrained_models(model)
        if not targets:
            raise Unsupported(f"bnb_{fmt} goes through transformers' BitsAndBytesConfig: the "
                              "model holds no transformers PreTrainedModel")
        config = BitsAndBytesConfig(**options, bnb_4bit_compute_dtype=torch.float32)
        for parent, name, pretrained in targets:
            with tempfile.TemporaryDirectory() as folder:
                pretrained.save_pretrained(folder)
                quantized = type(pretrained).from_pretrained(
                    folder, quantization_config=config, dtype=torch.float32,
                    device_map=ctx.device).eval()
            # A model built without an optional part (BertModel(add_pooling_layer=False)) comes
            # back with it, freshly initialized and unquantized: remove it again.
            for part, _ in list(quantized.named_children()):
                if getattr(pretrained, part, "absent") is None:
                    setattr(quantized, part, None)
            for module in quantized.modules():
                if type(module).__name__ in LAYERS["4bit"]:
                    module.register_state_dict_pre_hook(_unpack_before_saving)
            if parent is None:
                model = quantized
            else:
                setattr(parent, name, quantized)
        return Compressed(model, "real")

    transform.__doc__ = (f"bitsandbytes {fmt} weights for every Linear but the output head, "
                         "through transformers' BitsAndBytesConfig (fp32 compute).")
    return transform


# bitsandbytes' own ops on its packed weights
KERNELS = {"int8": r"^bitsandbytes::int8_(linear_matmul|scaled_mm|mixed_scaled_mm)$",
           "nf4": r"^bitsandbytes::(gemv_4bit|dequantize_4bit)$",
           "fp4": r"^bitsandbytes::(gemv_4bit|dequantize_4bit)$"}
for _fmt in FORMATS:
    register(f"bnb_{_fmt}", family="quantization", real_on=("cpu", "cuda"), keeps={"grid"},
             kernel=KERNELS[_fmt])(bnb(_fmt))


def bnb_format(model: nn.Module) -> str:
    """'4bit', 'int8' or 'float': the bitsandbytes format of the model's Linear layers."""
    for module in model.modules():
        for fmt, classes in LAYERS.items():
            if type(module).__name__ in classes:
                return fmt
    return "float"


def unpack_cpu_4bit(model: nn.Module) -> None:
    """Put every 4-bit weight of `model` back in bitsandbytes' common layout.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight for its fast
    kernel at the first inference call in eval mode. That kernel has no backward (a fine-tune
    would silently lose every gradient through the layer), and bitsandbytes' own inverse, which
    it runs before saving, leaves the scales transposed when there is no double quantization:
    any state_dict() after inference then corrupts the layer in place. This inverse restores
    them too; the scales stay rounded to bf16, as the repacked model that was scored used them.
    """
    for module in model.modules():
        _unpack(module)


def _unpack(module: nn.Module) -> None:
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        nested = state.original_nested
        weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        if not nested:  # repacked as (in / blocksize, out) in bf16; stored as (out * in / bs,)
            state.absmax = state.absmax.T.reshape(-1).float()
        weight.quant_state = state


def _unpack_before_saving(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    """A state_dict pre-hook: saving (save_pretrained, torch.save, peft) never corrupts."""
    _unpack(module)
