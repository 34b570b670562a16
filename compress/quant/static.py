"""Post-training static int8: weights and activations int8, scales from calibration data.

`int8_static` through FX graph mode (torch.ao, deprecated upstream), `int8_pt2e` through PT2E
(torchao) and torch.compile, its successor; both are measured, so the suite keeps working once
torch.ao is gone and shows which is faster on each CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from compress.base import Compressed, Context, Unsupported
from compress.quant.sensitivity import QUANTIZED_LAYERS, most_sensitive
from compress.registry import register


@dataclass(frozen=True)
class Mixed:
    """How many of the layers most sensitive to int8 stay in float (quant/sensitivity.py)."""

    float: int = 0

    def __post_init__(self):
        if self.float < 0:
            raise ValueError(f"float must be a count of layers, 0 or more, got {self.float}")


@register("int8_static", Mixed, family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=r"^quantized::", example="float=2")  # torch's quantized engine
def int8_static(config: Mixed) -> Callable[[nn.Module, Context], Compressed]:
    def transform(model: nn.Module, ctx: Context) -> Compressed:
        return _int8_static(model, ctx, config.float)

    transform.__doc__ = _int8_static.__doc__ + (
        f" The {config.float} layers most sensitive to int8 stay in float." if config.float
        else "")
    return transform


def _int8_static(model: nn.Module, ctx: Context, keep_float: int) -> Compressed:
    """FX graph-mode static int8 with the x86 backend (per-channel weights, fused conv+relu).

    Why FX and not PT2E: on torch 2.14, PT2E lives in torchao and is only fast under
    torch.compile (its eager path is 2-5x *slower* than fp32), and compiling costs minutes on a
    small CPU; FX runs real fbgemm/x86 int8 kernels in eager mode at the same speed
    (resnet18 b32/224: 531 -> 66 ms), so its speedup is real without a compiler.
    """
    if ctx.device != "cpu":
        raise Unsupported("int8_static: torch's quantized int8 kernels run on the CPU only")
    batches = list(ctx.calibration)
    if not batches:
        raise Unsupported("int8_static needs calibration batches in Context.calibration")
    torch.backends.quantized.engine = "x86"
    mapping = get_default_qconfig_mapping("x86")
    layers = sum(isinstance(m, QUANTIZED_LAYERS) for m in model.modules())
    if keep_float >= layers:
        raise Unsupported(f"int8_static@float={keep_float}: the model has {layers} layers int8 "
                          "could quantize; keeping them all in float leaves nothing in int8")
    for name in most_sensitive(model, batches, keep_float):
        mapping.set_module_name(name, None)
    try:
        prepared = prepare_fx(model, mapping, example_inputs=(batches[0],))
    except torch.fx.proxy.TraceError as err:  # data-dependent control flow in forward()
        raise Unsupported(f"int8_static: FX graph mode cannot trace this model's forward "
                          f"({str(err).splitlines()[0]})") from err
    with torch.inference_mode():
        for batch in batches:
            prepared(batch)
    return Compressed(convert_fx(prepared), "real")


@register("int8_pt2e", family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=r"^onednn::q(conv|linear)")
def int8_pt2e(model: nn.Module, ctx: Context) -> Compressed:
    """PT2E static int8, FX's successor: torch.export (dynamic sizes), torchao's
    X86InductorQuantizer (per-channel weights, activations calibrated), then torch.compile with
    Inductor's freezing, which lowers the quantized patterns to oneDNN's int8 kernels
    (onednn::qconv_pointwise, onednn::qlinear_pointwise). Compiling takes seconds to minutes;
    eager PT2E would run float ops around quantize/dequantize pairs."""
    if ctx.device != "cpu":
        raise Unsupported("int8_pt2e: X86InductorQuantizer lowers to oneDNN's CPU kernels")
    batches = list(ctx.calibration)
    if not batches or ctx.example_input is None:
        raise Unsupported("int8_pt2e needs calibration batches and an example input")
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as err:
        raise Unsupported("int8_pt2e needs torchao: pip install torchao") from err
    example = ctx.example_input
    # Every size the model allows to vary stays dynamic (the batch; the image size of a fully
    # convolutional network scored on photos of any size), the rest is inferred as constant.
    # Export takes a size of 1 for a constant, so a batch of one is traced as two.
    traced = example if len(example) > 1 else example.expand(2, *example.shape[1:]).clone()
    sizes = {dim: torch.export.Dim.AUTO for dim in range(traced.dim())}
    try:
        program = torch.export.export(model, (traced,), dynamic_shapes=(sizes,), strict=False)
    except Exception as err:  # export's errors have no common base class
        raise Unsupported(f"int8_pt2e: torch.export cannot capture this model "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    batch = _traced_input(program).shape[0]
    if is_concrete_int(batch):  # the graph would refuse every other batch size
        raise Unsupported(f"int8_pt2e: torch.export fixed the batch size at {batch} (the "
                          "model's code uses it as a constant), so the quantized graph runs "
                          "at that batch only")
    exported = program.module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for calibration in batches:
            prepared(calibration)
    compiled = _Frozen(_without_unused_tensors(convert_pt2e(prepared)))
    try:  # compile now, not in the first timed round: once per grad mode the caller may use
        with torch.no_grad():
            compiled(example)
        with torch.inference_mode():
            compiled(example)
    except Exception as err:  # Inductor's failures have no common base class either
        raise Unsupported(f"int8_pt2e: Inductor cannot compile this quantized model "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    return Compressed(compiled, "real")


def _traced_input(program: torch.export.ExportedProgram) -> torch.Tensor:
    """The fake tensor export traced the model's input as: a size it specialized is a
    concrete int (or a SymInt of a constant), one it kept dynamic a symbol."""
    user_input = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_input)
    return node.meta["val"]


def _without_unused_tensors(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """convert_pt2e folds each weight into an int8 constant and leaves the float original
    attached, unused: dropped, so that what ships (the state_dict) is the int8 model."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(graph.get_submodule(owner), attribute)
    return graph


class _Frozen(nn.Module):
    """A PT2E-quantized module compiled by Inductor with freezing (constant weights folded
    and prepacked, which the int8 lowering needs), set per call rather than process-wide: a
    new input shape recompiles under the same setting."""

    def __init__(self, quantized: nn.Module):
        super().__init__()
        self.quantized = quantized  # its state_dict is what ships
        # Not a submodule: torch.compile's wrapper would list the same weights a second time.
        # Static shapes, one compile per batch size: Inductor's dynamic-batch lowering of
        # quantized convolutions failed on the Fashion-MNIST CNN (a stride assertion).
        object.__setattr__(self, "_compiled", torch.compile(quantized, dynamic=False))

    def forward(self, x: torch.Tensor):
        # Inductor asserts the strides it compiled for, and a size-1 channel dimension can
        # come with any stride (Fashion-MNIST's 1-channel images do): give it the standard ones.
        if x.stride() != torch.empty(x.shape, device="meta").stride():
            x = x.clone(memory_format=torch.contiguous_format)
        with torch._inductor.config.patch(freezing=True):
            return self._compiled(x)

    def train(self, mode: bool = True) -> _Frozen:
        # An exported graph was captured in eval mode and refuses .train()/.eval().
        self.training = mode
        return self
