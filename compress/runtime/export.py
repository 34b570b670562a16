"""Export formats a model ships in, each run by its own runtime, as `yolo benchmark` compares them.

- `torchscript`: `torch.jit.trace`, saved and loaded back, run by the TorchScript interpreter;
- `onnx`: `torch.onnx.export` (opset 17, batch dimension dynamic), run by ONNX Runtime;
- `onnx_int8`: that ONNX file quantized by ONNX Runtime's static int8 quantization (QDQ,
  per-channel int8 weights, int8 activations calibrated on the calibration batches);
- `onnx_int4@b`: that ONNX file with 4-bit weights (MatMulNBits, a scale per `b` inputs), for
  transformers: their Linear layers export as MatMul. A causal LM is exported with its KV cache
  by ONNX Runtime GenAI's builder instead (`causal_lm.py`), as it is deployed.

The artifact is the exported file itself (`Exported.artifact`), so its size is what ships.
ONNX Runtime sessions run on as many threads as torch is set to when they are called, so a
benchmark that fixes torch's thread count fixes theirs too.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.base import Compressed, Context, StoredTensor, Unsupported, relative_difference
from compress.kernels import profiled
from compress.registry import register
from compress.runtime import causal_lm

OPSET = 17
INT4_OPSET = 21  # the first with int4 tensors


class Exported(nn.Module):
    """A model exported to a file and run by that format's runtime."""

    def __init__(self, artifact: Path, run: Callable,
                 tensors: list[torch.Tensor | StoredTensor], folder):
        super().__init__()
        self.artifact = artifact  # the file that ships
        self.stored = weights(tensors)
        self._run = run
        self._folder = folder  # keeps the temporary folder (and the file) alive

    def forward(self, x: torch.Tensor):
        out = self._run(x)
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out

    def operators(self, x: torch.Tensor) -> Counter[str]:
        """What one call ran, in the runtime's own words where it keeps an account."""
        own = getattr(self._run, "operators", None)
        return own(x) if own else profiled(lambda: self(x))


def weights(tensors: list[torch.Tensor | StoredTensor]) -> list[StoredTensor]:
    """The weights among a file's tensors: float and 8-bit ones (integer ones are shapes and
    indices), and what the runtime says a packed one holds."""
    return [t if isinstance(t, StoredTensor) else StoredTensor.of(t) for t in tensors
            if isinstance(t, StoredTensor) or t.is_floating_point()
            or t.dtype in (torch.int8, torch.uint8)]


@register("torchscript", family="export", real_on=("cpu",))
def torchscript(model: nn.Module, ctx: Context) -> Compressed:
    """TorchScript: traced on the example input, saved, loaded back, run by its interpreter."""
    example = _example(ctx, "torchscript")
    folder = tempfile.TemporaryDirectory(prefix="compress-torchscript-")
    path = Path(folder.name) / "model.torchscript"
    with torch.no_grad():
        # trace's own check runs the model twice and compares the graphs; models that cache
        # on their first call (YOLO's anchors) fail it, so the outputs are compared instead.
        torch.jit.trace(_Flat(model).eval(), example, check_trace=False).save(str(path))
    loaded = torch.jit.load(str(path)).eval()
    exported = Exported(path, loaded, list(loaded.state_dict().values()), folder)
    _check_same(model, exported, example, "torchscript")
    return Compressed(exported, "real")


@register("onnx", family="export", real_on=("cpu",))
def onnx(model: nn.Module, ctx: Context) -> Compressed:
    """ONNX (opset 17, dynamic batch) run by ONNX Runtime's CPU execution provider."""
    folder = tempfile.TemporaryDirectory(prefix="compress-onnx-")
    example = _example(ctx, "onnx")
    exported = _onnx_runtime(_export_onnx(model, example, Path(folder.name) / "model.onnx"),
                             folder)
    _check_same(model, exported, example, "onnx")
    return Compressed(exported, "real")


def power_of_two(what: str, size: int) -> None:
    """A 4-bit runtime's block (group) size: a power of 2 from 16, refused otherwise."""
    if size < 16 or size & (size - 1):
        raise ValueError(f"the {what} size must be a power of 2 >= 16, got {size}")


@dataclass(frozen=True)
class Block:
    """How many consecutive inputs share a scale."""

    block: int

    def __post_init__(self):
        power_of_two("block", self.block)


@register("onnx_int4", Block, family="export", real_on=("cpu",), keeps={"grid"},
          kernel=r"^MatMulNBits$", example="32")
def onnx_int4(config: Block) -> Callable[[nn.Module, Context], Compressed]:
    """ONNX Runtime int4 weight-only: every MatMul with a constant weight becomes MatMulNBits."""
    block = config.block

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )
        except ImportError as err:
            raise Unsupported("onnx_int4 needs onnxruntime and onnx-ir: pip install "
                              "onnxruntime onnx-ir") from err
        import onnx
        from onnx import version_converter

        if causal_lm.is_causal_lm(model):  # exported with its KV cache, as it is deployed
            return causal_lm.onnx_int4(model, ctx, block, ACCURACY_LEVEL)
        folder = tempfile.TemporaryDirectory(prefix="compress-onnx-int4-")
        root = Path(folder.name)
        fp32 = _export_onnx(model, _example(ctx, "onnx_int4"), root / "fp32.onnx")
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True,
                                              accuracy_level=ACCURACY_LEVEL,
                                              op_types_to_quantize=("MatMul", "Gather"))
        # int4 tensors need opset 21. Converted here, op by op (ReduceL2's axes became an
        # input at 18); the quantizer would only relabel the graph's opset and leave it invalid.
        graph = version_converter.convert_version(onnx.load(str(fp32)), INT4_OPSET)
        quantizer = MatMulNBitsQuantizer(graph, algo_config=config)
        quantizer.process()
        if not any(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node):
            raise Unsupported("onnx_int4: the exported graph has no MatMul with a constant "
                              "weight to quantize (a Linear on 2-D inputs exports as Gemm)")
        int4 = root / "model.onnx"
        quantizer.model.save_model_to_file(str(int4), False)
        fp32.unlink()
        return Compressed(_onnx_runtime(int4, folder), "real",
                          extras={"accuracy_level": ACCURACY_LEVEL})

    transform.__doc__ = (f"ONNX Runtime int4 weight-only (MatMulNBits, symmetric, a scale per "
                         f"{block} inputs; embeddings by GatherBlockQuantized), accuracy level "
                         f"{ACCURACY_LEVEL}: activations quantized to int8 per block inside "
                         "the kernel, int8 dot products.")
    return transform


# MatMulNBits' accuracy level, the least precision its activations may be computed in: 4 is
# int8 (each block of activations quantized in the kernel, integer dot products on AVX2 and
# AVX512-VNNI); 1 is fp32, which expands the 4-bit weights block by block instead.
ACCURACY_LEVEL = 4


# ONNX Runtime's integer nodes after its graph optimizations
@register("onnx_int8", family="export", real_on=("cpu",), keeps={"grid"},
          kernel=r"^(QLinear\w+|ConvInteger|MatMulInteger|DynamicQuantizeMatMul|QGemm)$")
def onnx_int8(model: nn.Module, ctx: Context) -> Compressed:
    """ONNX Runtime static int8 (QDQ, per-channel weights), calibrated on the calibration data."""
    batches = list(ctx.calibration)
    if not batches:
        raise Unsupported("onnx_int8 needs calibration batches in Context.calibration")
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise Unsupported("onnx_int8 needs onnxruntime: pip install onnxruntime") from err
    folder = tempfile.TemporaryDirectory(prefix="compress-onnx-int8-")
    root = Path(folder.name)
    fp32 = _export_onnx(model, _example(ctx, "onnx_int8"), root / "fp32.onnx")
    prepared, int8 = root / "prepared.onnx", root / "model.onnx"
    # Shape inference and graph clean-up first (ONNX's own shape inference: the symbolic one
    # gives up on YOLO's head).
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            batch = next(self.left, None)
            return None if batch is None else {"input": batch.detach().cpu().numpy()}

    # Only the layers with weights run in int8. Quantizing every op also quantizes tensors that
    # join unlike ranges under one scale (YOLO concatenates boxes in pixels with class scores
    # in [0, 1]: every score rounds to 0, measured mAP 0).
    quantize_static(str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ,
                    per_channel=True, op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    fp32.unlink()
    prepared.unlink()
    return Compressed(_onnx_runtime(int8, folder), "real")


# An exported float model must reproduce the model: the largest output difference, relative
# to the largest output, stays within float reordering of the same arithmetic.
EXPORT_RTOL = 1e-4


def _check_same(model: nn.Module, exported: Exported, example: torch.Tensor, name: str) -> None:
    """The first output (the prediction; some heads return features beside it) must match."""
    with torch.no_grad():
        want, got = _flatten(model(example))[0], _flatten(exported(example))[0]
    if want.shape != got.shape:
        raise AssertionError(f"{name}: the exported model's output has shape "
                             f"{tuple(got.shape)}, the model's {tuple(want.shape)}")
    worst = relative_difference(got, want)
    if not worst <= EXPORT_RTOL:
        raise AssertionError(f"{name}: the exported model's output differs from the model's "
                             f"by {worst:.3g} of its largest value (allowed {EXPORT_RTOL:g}): "
                             "the export is not the model")


def _example(ctx: Context, name: str) -> torch.Tensor:
    if ctx.example_input is None:
        raise Unsupported(f"{name} traces the model: it needs Context.example_input")
    if ctx.device != "cpu":
        raise Unsupported(f"{name} runs here on the CPU runtime only")
    return ctx.example_input


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as err:
        raise Unsupported("ONNX export needs onnx and onnxruntime: pip install onnx "
                          "onnxruntime") from err
    with torch.no_grad():
        outputs = _flatten(model(example))
    names = [f"output{i}" for i in range(len(outputs))]
    batch = {"input": {0: "batch"}, **{name: {0: "batch"} for name in names}}
    with torch.no_grad():
        torch.onnx.export(_Flat(model).eval(), (example,), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["input"], output_names=names,
                          dynamic_axes=batch)
    return path


def _flatten(output) -> list[torch.Tensor]:
    """The tensors of a nested output, in order (dict values, list and tuple items)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [t for item in output for t in _flatten(item)]
    return []  # None, shapes and other non-tensors do not ship


class _Flat(nn.Module):
    """The model with its output flattened to a tuple of tensors, which every format can hold
    (ultralytics' Detect head returns a tensor and a dict of lists): the first stays first.
    Built in eval mode: the ONNX exporter restores the wrapper's mode, and with it the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_flatten(self.model(x)))


class OnnxRuntime:
    """Runs an ONNX file with ONNX Runtime on as many threads as torch is set to."""

    def __init__(self, path: Path):
        self.path = path
        self.sessions = {}  # one per thread count

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session().run(None, {"input": _array(x)})
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outputs)

    def session(self):
        n = torch.get_num_threads()
        if n not in self.sessions:
            self.sessions[n] = ort_session(self.path, n)
        return self.sessions[n]

    def operators(self, x: torch.Tensor) -> Counter[str]:
        session = ort_session(self.path, torch.get_num_threads(), profile=True)
        session.run(None, {"input": _array(x)})
        return profiled_nodes(session)


def ort_session(path: Path, n_threads: int, profile: bool = False):
    """An ONNX Runtime CPU session of the file on `n_threads` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = n_threads, 1
    options.log_severity_level = 3  # errors only
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_name("profile"))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profiled_nodes(session) -> Counter[str]:
    """The op type of every node a profiling session ran, from its profiler: after ONNX
    Runtime's graph optimizations (a QDQ pair around a Conv runs as one QLinearConv)."""
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    return Counter(e["args"]["op_name"] for e in events if e.get("cat") == "Node"
                   and e.get("name", "").endswith("_kernel_time"))


def _array(x: torch.Tensor):
    """The input as ONNX Runtime takes it: float32 images, token ids as they are."""
    x = x.detach().cpu()
    return (x.float() if x.is_floating_point() else x).numpy()


def _onnx_runtime(path: Path, folder) -> Exported:
    import onnx

    return Exported(path, OnnxRuntime(path), stored_tensors(onnx.load(str(path)).graph), folder)


def stored_tensors(graph) -> list[torch.Tensor | StoredTensor]:
    """The initializers of an ONNX graph, 4-bit ones as what they pack."""
    from onnx import numpy_helper

    packed = _packed_weights(graph)
    return [packed.get(t.name) or torch.from_numpy(numpy_helper.to_array(t).copy())
            for t in graph.initializer]


def _packed_weights(graph) -> dict[str, StoredTensor]:
    """The initializers of ONNX Runtime's 4-bit nodes, two weights a byte: MatMulNBits' B
    (N x K weights in uint8 blocks) and GatherBlockQuantized's data (int4, or uint8 pairs)."""
    import onnx

    initializers = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("bits", 4) != 4 or node.op_type not in ("MatMulNBits",
                                                                    "GatherBlockQuantized"):
            continue
        name = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
        stored = initializers.get(name)
        if stored is None:
            continue
        elements = int(np.prod(stored.dims))
        if stored.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            params, nbytes = elements, (elements + 1) // 2
        else:  # uint8 bytes
            params, nbytes = 2 * elements, elements
        out[name] = StoredTensor(params, params, nbytes, "int4")
    return out
