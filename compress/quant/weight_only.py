"""Weight-only int8 and int4 of every nn.Linear with torchao (`quantize_(model, config)`).

Activations stay in float; the weights are stored as integers with per-channel (int8) or
per-group (int4) scales. In eager mode torchao expands each weight back to float on every call
and multiplies in float (aten::mm; the profiler shows no integer kernel), so `int8_weight` and
`int4_weight` are *simulated*: their size is real, their speed is that of a float model with an
extra copy. On the CPU, IntxWeightOnlyConfig keeps each 4-bit value in an int8 byte, so the
artifact is int8's size: the benchmark reports that as measured rather than the 4-bit size it
could be packed to. The real CPU kernels want bf16 activations: `int4_bf16` (torchao's packed
int4 layout) and `int8_bf16` (Inductor's int8 weight-only matmul, under torch.compile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.registry import register

INT4_KERNEL = r"^aten::_weight_int4pack_mm_for_cpu$"  # torchao's int4 CPU kernel
INT4_CPU_GROUPS = (32, 64, 128)  # what its packed layout accepts


@dataclass(frozen=True)
class Group:
    """How many consecutive inputs share a scale and zero point."""

    group: int

    def __post_init__(self):
        if self.group < 1:
            raise ValueError(f"group size must be a positive integer, got {self.group}")


@dataclass(frozen=True)
class Int4CpuGroup:
    """A group size torchao's int4 CPU layout takes."""

    group: int

    def __post_init__(self):
        if self.group not in INT4_CPU_GROUPS:
            raise ValueError(f"torchao's CPU int4 layout takes groups of "
                             f"{', '.join(map(str, INT4_CPU_GROUPS))}, got {self.group}")


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as err:
        raise Unsupported("weight-only quantization needs torchao: pip install torchao") from err
    return tq


EAGER_DEQUANTIZES = ("torchao's eager path expands each weight to float on every call and "
                     "multiplies in float: no integer kernel runs")


def _quantize(model: nn.Module, config) -> Compressed:
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise Unsupported("weight-only quantization: the model has no nn.Linear layer")
    _torchao().quantize_(model, config)
    return Compressed(model, "simulated", why_simulated=EAGER_DEQUANTIZES)


@register("int8_weight", family="quantization", keeps={"grid"})
def int8_weight(model: nn.Module, ctx: Context) -> Compressed:
    """int8 weights with one scale per output channel (torchao Int8WeightOnlyConfig)."""
    return _quantize(model, _torchao().Int8WeightOnlyConfig())


@register("int4_weight", Group, family="quantization", keeps={"grid"}, example="32")
def int4_weight(config: Group) -> Callable[[nn.Module, Context], Compressed]:
    group = config.group

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        tq = _torchao()
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType

        for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
            if layer.in_features % group:
                raise Unsupported(f"int4_weight@{group}: a Linear has {layer.in_features} "
                                  f"inputs, not a multiple of the group size {group}")
        config = tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                         mapping_type=MappingType.ASYMMETRIC)
        return _quantize(model, config)

    transform.__doc__ = (f"int4 weights, asymmetric, one scale and zero point per {group} inputs "
                         "(torchao IntxWeightOnlyConfig; stored in int8 bytes on the CPU).")
    return transform


@register("int4_bf16", Int4CpuGroup, family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=INT4_KERNEL, example="64")
def int4_bf16(config: Int4CpuGroup) -> Callable[[nn.Module, Context], Compressed]:
    """torchao's int4 CPU kernel: every Linear's weight packed to 4 bits, activations bf16."""
    transform = _int4_cpu("int4_bf16", config.group, "tinygemm")
    transform.__doc__ = (f"int4 weights, asymmetric, a bf16 scale and zero point per "
                         f"{config.group} inputs (min/max), packed for torchao's CPU kernel "
                         "(aten::_weight_int4pack_mm_for_cpu, vectorized for bf16 "
                         "activations); every other tensor bf16.")
    return transform


@register("hqq_bf16", Int4CpuGroup, family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=INT4_KERNEL, example="64")
def hqq_bf16(config: Int4CpuGroup) -> Callable[[nn.Module, Context], Compressed]:
    """HQQ's scales and zero points on torchao's int4 CPU kernel."""
    transform = _int4_cpu("hqq_bf16", config.group, "hqq")
    transform.__doc__ = (f"int4 weights in groups of {config.group} whose scales and zero "
                         "points HQQ (half-quadratic quantization) optimises against the "
                         "weights' rounding error, without calibration data; torchao's int4 "
                         "CPU kernel, bf16 activations.")
    return transform


def check_groups(name: str, model: nn.Module, group: int) -> None:
    """torchao would leave a Linear whose inputs the group does not divide in float, silently."""
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        if layer.in_features % group:
            raise Unsupported(f"{name}: a Linear has {layer.in_features} inputs, not a multiple "
                              f"of the group size {group}")


def _int4_cpu(name: str, group: int, algorithm: str):
    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.device != "cpu":
            raise Unsupported(f"{name}: torchao's packed int4 layout is its CPU kernel's")
        _torchao()
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise Unsupported(f"{name}: the model has no nn.Linear layer")
        check_groups(f"{name}@{group}", model, group)
        model = model.to(torch.bfloat16)
        # An LM head tied to the token embedding is quantized too: decoding reads it for every
        # token, and the embedding keeps its bf16 copy for the lookup (both ship).
        _torchao().quantize_(model, PrototypeInt4WeightOnlyConfig(
            group_size=group, int4_choose_qparams_algorithm=algorithm,
            set_inductor_config=False))  # (it would retune every later compile in the run)
        return Compressed(model, "real", input_dtype=torch.bfloat16)

    return transform


class Int4Grid(NamedTuple):
    """A weight on torchao's int4 CPU grid: w = (levels - 8) * scale + zero, per (row, group)."""

    levels: torch.Tensor  # rows x columns, 0..15
    scale: torch.Tensor  # rows x groups, fp32 (the bf16 values the kernel reads)
    zero: torch.Tensor
    # AWQ's per-input scale the activations are multiplied by first; None for the others.
    act_pre_scale: torch.Tensor | None

    @property
    def group(self) -> int:
        return self.levels.shape[1] // self.scale.shape[1]

    def values(self) -> torch.Tensor:
        """The weights the grid holds, fp32 (before any activation pre-scale)."""
        return int4_values(self.levels, self.scale, self.zero)


def int4_values(levels: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The weights of the tinygemm int4 grid: (levels - 8) * scale + zero, the scale and zero of
    each (row, group) repeated over the group's columns."""
    group = levels.shape[1] // scale.shape[1]
    return ((levels.float() - 8) * scale.repeat_interleave(group, dim=1)
            + zero.repeat_interleave(group, dim=1))


def is_int4_cpu(weight: torch.Tensor) -> bool:
    """Whether a weight is packed for torchao's int4 CPU kernel (int4_bf16, hqq_bf16, awq, gptq)."""
    return type(weight).__name__ == "Int4OpaqueTensor"


def int4_cpu_grid(weight: torch.Tensor) -> Int4Grid | None:
    """The grid of a weight packed for torchao's int4 CPU kernel (int4_bf16, hqq_bf16, awq,
    gptq), read back exactly; None for any other weight."""
    if not is_int4_cpu(weight):
        return None
    group = weight.block_size[-1]
    scale_and_zero = weight.scale_and_zero.float()  # groups x rows x (scale, zero)
    # The packed layout is the kernel's own; its product with the identity in fp32 is the
    # weight, exactly: (q - 8) * scale + zero of bf16 scale and zero.
    columns = weight.shape[1]
    dense = torch.ops.aten._weight_int4pack_mm_for_cpu(
        torch.eye(columns), weight.qdata, group, scale_and_zero).t()
    scale = scale_and_zero[..., 0].t().contiguous()
    zero = scale_and_zero[..., 1].t().contiguous()
    levels = ((dense - zero.repeat_interleave(group, 1)) / scale.repeat_interleave(group, 1)
              + 8).round().to(torch.uint8)
    return Int4Grid(levels, scale, zero, weight.act_pre_scale)


def dequantize_int4_cpu(model: nn.Module) -> dict[nn.Linear, torch.Tensor]:
    """Give every Linear on torchao's int4 CPU grid a frozen float weight of the values it
    computes with (AWQ's activation scale folded in), in place; returns the packed weights,
    by layer, to put back. (The int4 kernel has no backward: nothing trains through it.)"""
    packed = {}
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        grid = int4_cpu_grid(layer.weight)
        if grid is None:
            continue
        dense = grid.values()
        if grid.act_pre_scale is not None:
            dense = dense * grid.act_pre_scale.float().reshape(1, -1)
        packed[layer] = layer.weight
        layer.weight = nn.Parameter(dense.to(layer.weight.dtype), requires_grad=False)
    return packed


@register("int8_bf16", family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=r"^aten::_weight_int8pack_mm$")
def int8_bf16(model: nn.Module, ctx: Context) -> Compressed:
    """int8 weights with one bf16 scale per output channel (torchao Int8WeightOnlyConfig), the
    model and its activations in bf16, run under torch.compile: Inductor replaces torchao's
    "convert the weight, multiply, scale" with aten::_weight_int8pack_mm, which reads the
    int8 weight as it multiplies (its pattern wants bf16 activations and scales)."""
    if ctx.device != "cpu":
        raise Unsupported("int8_bf16: Inductor's int8 weight-only matmul is a CPU kernel here")
    tq = _torchao()
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise Unsupported("int8_bf16: the model has no nn.Linear layer")
    model = model.to(torch.bfloat16)
    # set_inductor_config would change Inductor's settings for the whole process (every later
    # compile in the run); its defaults lower this pattern already.
    tq.quantize_(model, tq.Int8WeightOnlyConfig(set_inductor_config=False))
    model.compile(dynamic=True)  # in place: the model keeps its methods (generate, say)
    return Compressed(model, "real", input_dtype=torch.bfloat16)
