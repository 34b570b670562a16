"""LLM quantization beyond rounding to nearest, with torchao on its CPU kernels.

- `w8a8`: int8 weights (a scale per output channel) and int8 activations quantized per token as
  they arrive (torchao Int8DynamicActivationInt8WeightConfig); int8 x int8 matmuls
  (aten::_int_mm, oneDNN). Per-token scales are what per-tensor `int8_dynamic` lacks.
- `smoothquant@a`: the same after SmoothQuant (Xiao et al., 2023) divides each input channel of
  the activations by sᵢ = max|Xᵢ|^a / max|Wᵢ|^(1-a) and multiplies the weights' by it, moving
  activation outliers into the weights, where per-channel scales absorb them.
- `awq@g`: AWQ (Lin et al., 2024) searches a scale per input channel from the activations that
  minimises each layer's output error after int4 rounding, then packs the weights for
  torchao's int4 CPU kernel (groups of `g`, bf16 activations), as `int4_bf16@g` does.

The calibration batches are the workload's held-out data, never its scored samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.quant.weight_only import INT4_KERNEL, Int4CpuGroup, check_groups
from compress.registry import register

INT_MM = r"^aten::_int_mm$"  # torch's int8 x int8 -> int32 matmul (oneDNN on the CPU)


@dataclass(frozen=True)
class Alpha:
    """SmoothQuant's migration strength: how much of the outliers move into the weights."""

    alpha: float

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"smoothquant: the migration strength alpha is in [0, 1], got "
                             f"{self.alpha}")


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as err:
        raise Unsupported("this quantization needs torchao: pip install torchao") from err
    return tq


def _w8a8_config():
    # set_inductor_config would change Inductor's settings for every later compile in the run.
    return _torchao().Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


@register("w8a8", family="quantization", real_on=("cpu",), keeps={"grid"}, kernel=INT_MM)
def w8a8(model: nn.Module, ctx: Context) -> Compressed:
    """int8 weights per output channel, int8 activations per token (dynamic), int8 matmuls."""
    _cpu_linears("w8a8", model, ctx)
    _torchao().quantize_(model, _w8a8_config())
    return Compressed(model, "real")


@register("smoothquant", Alpha, family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=INT_MM, example="0.5")
def smoothquant(config: Alpha) -> Callable[[nn.Module, Context], Compressed]:
    alpha = config.alpha

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        _cpu_linears("smoothquant", model, ctx)
        from torchao.prototype.smoothquant import SmoothQuantConfig

        tokens = _calibrated(model, ctx, lambda step: SmoothQuantConfig(
            _w8a8_config(), step=step, alpha=alpha), torch.float32)
        return Compressed(model, "real", extras={"calibration_tokens": tokens})

    transform.__doc__ = (f"SmoothQuant (alpha {alpha:g}) then w8a8: activation outliers moved "
                         "into the weights, calibrated on held-out data.")
    return transform


@register("awq", Int4CpuGroup, family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=INT4_KERNEL, example="64")
def awq(config: Int4CpuGroup) -> Callable[[nn.Module, Context], Compressed]:
    group = config.group

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        _cpu_linears("awq", model, ctx)
        check_groups(f"awq@{group}", model, group)
        from torchao.prototype.awq import AWQConfig
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        model = model.to(torch.bfloat16)
        int4 = PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)
        tokens = _calibrated(model, ctx, lambda step: AWQConfig(int4, step=step), torch.bfloat16)
        return Compressed(model, "real", input_dtype=torch.bfloat16,
                          extras={"calibration_tokens": tokens})

    transform.__doc__ = (f"AWQ int4 (groups of {group}): activation-aware channel scales searched "
                         "on held-out data, packed for torchao's CPU kernel (bf16 activations).")
    return transform


def _cpu_linears(name: str, model: nn.Module, ctx: Context) -> None:
    if ctx.device != "cpu":
        raise Unsupported(f"{name}: torchao's kernels for it are measured on the CPU here")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise Unsupported(f"{name}: the model has no nn.Linear layer")


def _calibrated(model: nn.Module, ctx: Context, config: Callable[[str], object],
                dtype: torch.dtype) -> int:
    """torchao's prepare / calibrate / convert; returns the number of calibration samples
    (tokens, for a language model: every position of every batch)."""
    batches = list(ctx.calibration)
    if not batches:
        raise Unsupported("calibration-based quantization needs Context.calibration batches")
    tq = _torchao()
    tq.quantize_(model, config("prepare"))
    with torch.no_grad():
        for batch in batches:
            model(batch.to(dtype) if batch.is_floating_point() else batch)
    tq.quantize_(model, config("convert"))
    return sum(b.numel() if not b.is_floating_point() else b.shape[0] for b in batches)
