"""OpenVINO: the model converted to OpenVINO IR and run by its CPU plugin.

- `openvino`: `openvino.convert_model`, saved as IR (.xml graph + .bin weights), compiled;
- `openvino_int8`: that model quantized by NNCF's post-training quantization (int8 weights
  and activations, calibrated on the calibration batches; NNCF's default: symmetric weights,
  per channel, fast bias correction).

Both run with the fp32 inference precision pinned: on CPUs with AVX512-BF16 OpenVINO would
otherwise run every float layer in bf16 (measured on a Zen 4: MobileNetV2's convolutions
ran `Convolution[bf16]`), a cast that is not the technique, and absent on AVX2-only CPUs.
Compiled models run on as many threads as torch is set to when called, as ONNX Runtime here.
The artifact is the IR folder (both files); what the CPU plugin really ran (each layer's type
and runtime precision) is its proof: `Convolution[u8]` is an int8 kernel.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.base import Compressed, Context, StoredTensor, Unsupported
from compress.registry import register
from compress.runtime import causal_lm
from compress.runtime.export import (
    Exported,
    _check_same,
    _example,
    _Flat,
    _flatten,
    power_of_two,
)

# What proves an int8 execution: a layer with weights whose runtime precision is 8-bit.
KERNEL = r"^(Convolution|GroupConvolution|Deconvolution|FullyConnected|MatMul)\[(u8|i8)\]$"
# What proves weight compression ran: a fully connected layer fed the 8- or 4-bit weights
# directly (the CPU plugin decompresses them inside its kernel).
WEIGHT_KERNEL = r"^FullyConnected\[(u8|i8|u4|i4)\]$"


@dataclass(frozen=True)
class Group:
    """How many consecutive inputs share a scale."""

    group: int

    def __post_init__(self):
        power_of_two("group", self.group)


@register("openvino", family="export", real_on=("cpu",))
def openvino(model: nn.Module, ctx: Context) -> Compressed:
    """OpenVINO IR run by OpenVINO's CPU plugin, fp32."""
    ov, _ = _libraries("openvino")
    example = _example(ctx, "openvino")
    folder = tempfile.TemporaryDirectory(prefix="compress-openvino-")
    exported = _save(ov, _convert(ov, model, example), Path(folder.name), folder)
    _check_same(model, exported, example, "openvino")
    return Compressed(exported, "real")


@register("openvino_int8", family="export", real_on=("cpu",), keeps={"grid"}, kernel=KERNEL)
def openvino_int8(model: nn.Module, ctx: Context) -> Compressed:
    """OpenVINO int8: NNCF post-training quantization calibrated on the calibration batches."""
    ov, nncf = _libraries("openvino_int8")
    example = _example(ctx, "openvino_int8")
    batches = list(ctx.calibration)
    if not batches:
        raise Unsupported("openvino_int8 needs calibration batches in Context.calibration")
    dataset = nncf.Dataset(batches, lambda batch: batch.detach().cpu().numpy())
    quantized = nncf.quantize(_convert(ov, model, example), dataset, subset_size=len(batches))
    folder = tempfile.TemporaryDirectory(prefix="compress-openvino-int8-")
    return Compressed(_save(ov, quantized, Path(folder.name), folder), "real")


@register("openvino_int8_weight", family="export", real_on=("cpu",), keeps={"grid"},
          kernel=WEIGHT_KERNEL)
def openvino_int8_weight(model: nn.Module, ctx: Context) -> Compressed:
    """OpenVINO int8 weight compression (NNCF, data-free): weights int8 asymmetric per output
    channel, activations float."""
    _, nncf = _libraries("openvino_int8_weight")
    return _weight_compressed(model, ctx, "openvino_int8_weight",
                              {"mode": nncf.CompressWeightsMode.INT8_ASYM})


@register("openvino_int4_weight", Group, family="export", real_on=("cpu",), keeps={"grid"},
          kernel=WEIGHT_KERNEL, example="32")
def openvino_int4_weight(config: Group) -> Callable[[nn.Module, Context], Compressed]:
    group = config.group

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        _, nncf = _libraries("openvino_int4_weight")
        # ratio 1: every layer NNCF may put in int4 is; it keeps the embedding and the last
        # layer (a tied LM head) in int8 by default, as it recommends for LLMs.
        return _weight_compressed(model, ctx, f"openvino_int4_weight@{group}", {
            "mode": nncf.CompressWeightsMode.INT4_SYM, "group_size": group, "ratio": 1.0})

    transform.__doc__ = (f"OpenVINO int4 weight compression (NNCF, data-free): weights int4 "
                         f"symmetric in groups of {group}, the embedding and last layer int8; "
                         "activations float.")
    return transform


def _weight_compressed(model: nn.Module, ctx: Context, name: str, options: dict) -> Compressed:
    """NNCF's weight compression of the model's OpenVINO graph: a causal LM's with its KV cache
    (the GenAI builder's fp32 graph, checked against the model), any other model's traced."""
    ov, nncf = _libraries(name)
    if causal_lm.is_causal_lm(model):
        export = causal_lm.Export(model, ctx, name)
        converted = _typed_absent_inputs(ov.convert_model(str(export.fp32)))
        export.check(OvGraph(converted))
        compressed = nncf.compress_weights(converted, **options)
        folder = export.root / "ir"
        folder.mkdir()
        ov.save_model(compressed, str(folder / "model.xml"), compress_to_fp16=False)
        # The IR is what ships and is measured, but a plain OpenVINO Core cannot read it back
        # (GroupQueryAttention belongs to the ONNX frontend's extension opset): the model that
        # was saved runs from memory.
        return Compressed(causal_lm.CachedDecoder(OvGraph(compressed), export.cache_shape,
                                                  _weights(compressed), export.folder,
                                                  artifact=export.done(folder)), "real")
    example = _example(ctx, name)
    compressed = nncf.compress_weights(_convert(ov, model, example), **options)
    folder = tempfile.TemporaryDirectory(prefix=f"compress-{name}-")
    return Compressed(_save(ov, compressed, Path(folder.name), folder), "real")


def _typed_absent_inputs(model):
    """The ONNX frontend gives GroupQueryAttention's absent optional inputs as empty constants
    of dynamic element type, which NNCF cannot build its graph with: make them f32 (still
    empty, still absent)."""
    import openvino.opset13 as ops

    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_dynamic():
            shape = [d.get_length() for d in op.get_output_partial_shape(0)]
            typed = ops.constant(np.zeros(shape, np.float32))
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(typed.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _libraries(name: str):
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise Unsupported(f"{name} needs openvino and nncf: pip install openvino nncf") from err
    return ov, nncf


def _convert(ov, model: nn.Module, example: torch.Tensor):
    with torch.no_grad():
        outputs = len(_flatten(model(example)))
        converted = ov.convert_model(_Flat(model).eval(), example_input=example)
    if len(converted.outputs) != outputs:
        raise Unsupported(f"openvino: the converted model has {len(converted.outputs)} outputs, "
                          f"the model {outputs}")
    return converted


def _save(ov, model, folder: Path, keep) -> Exported:
    """The IR written to `folder` (its artifact) and loaded back, as a deployment loads it."""
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    loaded = ov.Core().read_model(str(folder / "model.xml"))
    return Exported(folder, OpenVino(loaded), _weights(loaded), keep)


# OpenVINO's element types under the names the other formats' weights go by.
_TYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i8": "int8",
               "u8": "uint8", "i4": "int4", "u4": "uint4"}


def _weights(model) -> list[StoredTensor]:
    """The IR's weights: float and 8- or 4-bit constants, each with its element type's own
    size (u4 and i4 pack two a byte)."""
    out = []
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_output_size() != 1 \
                or len(op.get_output_shape(0)) == 0:
            continue
        kind = op.get_output_element_type(0)
        if not (kind.is_real() or kind.get_type_name() in ("i8", "u8", "i4", "u4")):
            continue  # shapes, indices, masks
        count = int(np.prod(list(op.get_output_shape(0))))
        zeros = count - int(np.count_nonzero(op.get_data())) if kind.bitwidth >= 8 else 0
        out.append(StoredTensor(count, count - zeros, (count * kind.bitwidth + 7) // 8,
                                _TYPE_NAMES.get(kind.get_type_name(), kind.get_type_name())))
    return out


class OpenVino:
    """A model compiled by OpenVINO's CPU plugin, once per thread count (torch's when called)."""

    def __init__(self, model):
        self.model = model
        self.compiled = {}

    def request(self):
        import openvino as ov

        n = torch.get_num_threads()
        if n not in self.compiled:
            compiled = ov.Core().compile_model(self.model, "CPU", {
                "INFERENCE_NUM_THREADS": n, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32"})
            self.compiled[n] = (compiled, compiled.create_infer_request())
        return self.compiled[n]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, request = self.request()
        results = request.infer({0: x.detach().float().cpu().numpy()})
        return tuple(torch.from_numpy(results[i].copy()) for i in range(len(results)))

    def operators(self, x: torch.Tensor) -> Counter[str]:
        self(x)
        return self.executed()

    def executed(self) -> Counter[str]:
        """Each layer the CPU plugin executes, as `type[runtime precision]`."""
        compiled, _ = self.request()
        info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
        return Counter(f"{i['layerType'].astype(str)}[{i['runtimePrecision'].astype(str)}]"
                       for i in info if i["layerType"].astype(str) not in ("Const", "Input",
                                                                          "Output"))


class OvGraph(OpenVino):
    """A graph with named inputs and outputs (a causal LM with its KV cache), for
    causal_lm.CachedDecoder."""

    @property
    def input_names(self) -> list[str]:
        return [i.get_any_name() for i in self.model.inputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, request = self.request()
        return {port.get_any_name(): value for port, value in request.infer(feed).items()}

    def operators(self, feed: dict[str, np.ndarray]) -> Counter[str]:
        self.run(feed)
        return self.executed()
