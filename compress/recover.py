"""Recoveries: training after a technique that wins back some of what it lost (compress/pipeline.py
chains them: `prune_l1@0.5+ft`).

`+ft` fine-tunes the compressed weights themselves, `+kd` the same with the reference's
outputs as soft targets (knowledge distillation). They keep every zero of the model (a
fine-tune never densifies a pruned model, whatever pruned it) and what the technique declares
it keeps (`Technique.keeps`): a quantization grid they refuse, since training the weights
would leave it; shared values stay shared by construction (palettes train, indices do not).
`+lora` and `+qlora` train a low-rank adapter beside frozen weights (compress/lowrank/lora.py),
which keeps everything. Each trains with what the workload gives the Context (`finetune`,
`distill`), for the workload's own number of steps, or for as many as the stage names
(`+kd@1500`): a short recovery measures the lack of training more than the technique.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
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


def parse(stage: str, name: str) -> tuple[Recovery, int | None]:
    """The recovery a stage of `name` names, and the training steps it asks for: `ft` (the
    workload's own number), `ft@1500` (1,500 optimizer steps)."""
    base, at, text = stage.partition("@")
    steps = int(text) if text.isdigit() else 0
    if at and steps < 1:
        raise KeyError(f"recovery '+{stage}' in {name!r} is malformed: write it as "
                       f"+{base}@<steps>, a whole number of training steps, or +{base} for "
                       "the workload's own")
    return RECOVERIES[base], steps if at else None


def trained_for(ctx: Context, recovery: Recovery, steps: int | None, stage: str) -> Context:
    """`ctx` with the recovery's training cut to `steps` optimizer steps (the training
    function takes them as `steps=`); `ctx` itself without `steps`. Unsupported when the
    workload gives no such training, or one that takes no `steps`."""
    train = getattr(ctx, recovery.needs)
    if train is None:
        raise Unsupported(f"+{stage} needs Context.{recovery.needs}, which this workload does "
                          "not give")
    if steps is None:
        return ctx
    try:
        inspect.signature(train).bind(None, steps=steps)
    except TypeError:
        raise Unsupported(f"+{stage} sets the recovery's length, but this workload's "
                          f"{recovery.needs} takes no `steps`: give it one "
                          f"(`def {recovery.needs}(model, steps=None)`), or write "
                          f"+{stage.partition('@')[0]} for its own length") from None
    return dataclasses.replace(ctx, **{recovery.needs: functools.partial(train, steps=steps)})
