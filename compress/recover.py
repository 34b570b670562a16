"""Recoveries: training after a technique that wins back some of what it lost (compress/pipeline.py
chains them: `prune_l1@0.5+ft`).

`+ft` fine-tunes the compressed weights themselves, keeping every zero the technique made;
`+lora` and `+qlora` train a low-rank adapter beside frozen weights (compress/lowrank/lora.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.base import Compressed, Context, Unsupported
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


def finetune(model: nn.Module, ctx: Context) -> Compressed:
    """The workload's short recovery fine-tune, every zero the technique made kept."""
    if not any(p.is_floating_point() for p in model.parameters()):
        raise Unsupported("+ft: the model has no float weights to train")
    model.train()
    finetune_keeping_zeros(model, ctx.finetune)
    return Compressed(model.eval(), "real")


RECOVERIES = {"ft": finetune, "lora": lora.lora, "qlora": lora.qlora}

