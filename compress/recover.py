"""Recoveries: training after a technique that wins back some of what it lost (compress/pipeline.py
chains them: `prune_l1@0.5+ft`).

`+ft` fine-tunes the compressed weights themselves, `+kd` the same with the reference's
outputs as soft targets (knowledge distillation). They keep every zero of the model (a
fine-tune never densifies a pruned model, whatever pruned it) and what the technique declares
it keeps (`Technique.keeps`): a quantization grid they refuse, since training the weights
would leave it; shared values stay shared by construction (palettes train, indices do not).
`+lora` and `+qlora` train a low-rank adapter beside frozen weights (compress/lowrank/lora.py),
which keeps everything. Each trains with what the workload gives the Context (`finetune`,
`distill`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.base import Compressed, Context, Invariant, Unsupported
from compress.lowrank import lora


class _KeepZeros(nn.Module):
    """A parametrization that multiplies a weight by a fixed 0/1 mask, so zeros stay zero."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def finetune_keeping_zeros(model: nn.Module, finetune) -> None:
    """Run `finetune(model)` with every exactly-zero weight held at zero throughout."""
    masked = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.is_floating_point():
            mask = weight.detach() != 0
            if not bool(mask.all()):
                # The mask in the weight's dtype: a float32 mask would promote an fp16/bf16
                # weight, which register_parametrization refuses (ValueError).
                mask = mask.to(weight.dtype)
                parametrize.register_parametrization(module, "weight", _KeepZeros(mask))
                masked.append(module)
    finetune(model)
    for module in masked:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def finetune(model: nn.Module, ctx: Context, keeps: frozenset[Invariant]) -> Compressed:
    """The workload's short recovery fine-tune, every zero and what the technique declares
    kept."""
    return _trained(model, ctx.finetune, keeps, "+ft")


def distill(model: nn.Module, ctx: Context, keeps: frozenset[Invariant]) -> Compressed:
    """The workload's recovery fine-tune with the reference's outputs as soft targets beside
    the task's loss (knowledge distillation), every zero and what the technique declares
    kept."""
    return _trained(model, ctx.distill, keeps, "+kd")


def _trained(model: nn.Module, train, keeps: frozenset[Invariant], name: str) -> Compressed:
    if not any(p.is_floating_point() for p in model.parameters()):
        raise Unsupported(f"{name}: the model has no float weights to train")
    if "grid" in keeps:
        raise Unsupported(f"{name} would move the quantized weights off their grid: recover "
                          "with +lora or +qlora, which train an adapter beside them")
    model.train()
    # Shared weights need nothing more: a sharing technique stores palettes (trained) and
    # indices (buffers), so weights that shared a value still do (compress/sharing/).
    finetune_keeping_zeros(model, train)
    return Compressed(model.eval(), "real")


@dataclass(frozen=True)
class Recovery:
    run: Callable[[nn.Module, Context, frozenset[Invariant]], Compressed]
    needs: str  # the Context field that trains: "finetune" or "distill"


RECOVERIES = {"ft": Recovery(finetune, "finetune"), "kd": Recovery(distill, "distill"),
              "lora": Recovery(lora.lora, "finetune"), "qlora": Recovery(lora.qlora, "finetune")}
