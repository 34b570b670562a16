"""Recovery pipelines: a technique followed by a fine-tune that keeps the zeros it made."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.base import Compressed, Context, Technique, Unsupported


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


def with_finetune(technique: Technique) -> Technique:
    """`technique+ft`: apply the technique, then the caller's recovery fine-tune."""

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.finetune is None:
            raise Unsupported(f"{technique.name}+ft needs a fine-tune in Context.finetune")
        out = technique.transform(model, ctx)
        if not any(p.is_floating_point() for p in out.model.parameters()):
            raise Unsupported(f"{technique.name}+ft: the model has no float weights to train")
        out.model.train()
        finetune_keeping_zeros(out.model, ctx.finetune)
        out.model.eval()
        return out

    transform.__doc__ = f"{technique.doc} Then a short recovery fine-tune, zeros kept."
    return Technique(f"{technique.name}+ft", "pipeline", technique.real_on, transform,
                     transform.__doc__)
