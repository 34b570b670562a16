"""Recoveries: training after a technique that wins back some of what it lost (compress/pipeline.py
chains them: `prune_l1@0.5+ft`).

`+ft` fine-tunes the compressed weights themselves. It keeps every zero of the model (a
fine-tune never densifies a pruned model, whatever pruned it) and what the technique declares
it keeps (`Technique.keeps`): shared values stay shared; a quantization grid it refuses, since
training the weights would leave it. `+lora` and `+qlora` train a low-rank adapter beside
frozen weights (compress/lowrank/lora.py), which keeps everything.
"""

from __future__ import annotations

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


class _KeepShared(nn.Module):
    """A parametrization whose trained tensor is a weight's palette (its distinct values): the
    weight is rebuilt from it through a fixed index, so weights that shared a value still do
    (the centroids are fine-tuned, as Deep Compression does after k-means), and a zero stays
    zero."""

    def __init__(self, index: torch.Tensor, zero: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)
        self.register_buffer("zero", zero)  # which palette entry is 0, if one is

    def forward(self, palette: torch.Tensor) -> torch.Tensor:
        return palette.masked_fill(self.zero, 0.0)[self.index]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.unique(weight)  # sorted, as the index was taken


def finetune_keeping_shared(model: nn.Module, finetune) -> None:
    """Run `finetune(model)` training each weight's palette, so shared values stay shared."""
    shared = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.is_floating_point():
            palette, index = torch.unique(weight.detach(), return_inverse=True)
            parametrize.register_parametrization(module, "weight",
                                                 _KeepShared(index, palette == 0))
            shared.append(module)
    finetune(model)
    for module in shared:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def finetune(model: nn.Module, ctx: Context, keeps: frozenset[Invariant]) -> Compressed:
    """The workload's short recovery fine-tune, every zero and what the technique declares
    kept."""
    if not any(p.is_floating_point() for p in model.parameters()):
        raise Unsupported("+ft: the model has no float weights to train")
    if "grid" in keeps:
        raise Unsupported("+ft would move the quantized weights off their grid: recover with "
                          "+lora or +qlora, which train an adapter beside them")
    model.train()
    if "shared" in keeps:
        finetune_keeping_shared(model, ctx.finetune)
    else:
        finetune_keeping_zeros(model, ctx.finetune)
    return Compressed(model.eval(), "real")


RECOVERIES = {"ft": finetune, "lora": lora.lora, "qlora": lora.qlora}

