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
from pathlib import Path

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.runtime.export import Exported, _check_same, _example, _Flat, _flatten

# What proves an int8 execution: a layer with weights whose runtime precision is 8-bit.
KERNEL = r"^(Convolution|GroupConvolution|Deconvolution|FullyConnected|MatMul)\[(u8|i8)\]$"


def openvino(model: nn.Module, ctx: Context) -> Compressed:
    """OpenVINO IR run by OpenVINO's CPU plugin, fp32."""
    ov, _ = _libraries("openvino")
    example = _example(ctx, "openvino")
    folder = tempfile.TemporaryDirectory(prefix="compress-openvino-")
    exported = _save(ov, _convert(ov, model, example), Path(folder.name), folder)
    _check_same(model, exported, example, "openvino")
    return Compressed(exported, "real")


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
    weights = [torch.from_numpy(op.get_data().copy()) for op in loaded.get_ops()
               if op.get_type_name() == "Constant" and op.get_output_size() == 1
               and len(op.get_output_shape(0)) > 0]
    return Exported(folder, OpenVino(loaded), weights, keep)


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
        """Each layer the CPU plugin executes, as `type[runtime precision]`."""
        compiled, _ = self.request()
        self(x)
        info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
        return Counter(f"{i['layerType'].astype(str)}[{i['runtimePrecision'].astype(str)}]"
                       for i in info if i["layerType"].astype(str) not in ("Const", "Input",
                                                                          "Output"))
