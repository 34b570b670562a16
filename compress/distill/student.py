"""Knowledge distillation into a student (Hinton et al., 2015): `student@w` trains, from
scratch, the architecture the workload declares for its students at width multiplier `w`
(MobileNetV2's `width_mult`, a CNN's channel counts times w), with the reference's outputs as
soft targets beside the labels, for as long as the reference itself was trained.

The student is a dense float model with fewer channels: it runs for real everywhere, and it
composes with any technique after it (`student@0.5+int8_static`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.registry import register


@dataclass(frozen=True)
class Width:
    """The student's width as a fraction of the reference's."""

    width: float

    def __post_init__(self):
        if not 0 < self.width < 1:
            raise ValueError(f"width must be in (0, 1), a fraction of the reference's, got "
                             f"{self.width}")


@register("student", Width, family="distillation", real_on=("cpu", "cuda"), example="0.5")
def student(config: Width) -> Callable[[nn.Module, Context], Compressed]:
    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.student is None or ctx.teach is None:
            raise Unsupported("student: the workload declares no student architecture "
                              "(Workload.student) or no way to train one (Workload.teach)")
        with torch.random.fork_rng(devices=[]):  # a seeded start, the caller's RNG untouched
            torch.manual_seed(0)
            taught = ctx.student(config.width).to(ctx.device)
        reference = sum(p.numel() for p in model.parameters())
        params = sum(p.numel() for p in taught.parameters())
        if params >= reference:
            raise Unsupported(f"student@{config.width}: the student has {params:,} parameters, "
                              f"not fewer than the reference's {reference:,}")
        ctx.teach(taught)
        return Compressed(taught.eval(), "real",
                          extras={"params_fraction": round(params / reference, 4)})

    transform.__doc__ = (f"The workload's student architecture at width {config.width}, trained "
                         "from scratch on the reference's soft targets and the labels.")
    return transform
