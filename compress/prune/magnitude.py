"""Unstructured magnitude pruning: zero the smallest weights, per layer or across the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import prune

from compress.base import Compressed, Context, tied_parameters
from compress.batchnorm import reestimate_batchnorm
from compress.registry import register

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DENSE_WHY = "zeros are stored and multiplied densely: no sparse kernel runs"


@dataclass(frozen=True)
class Sparsity:
    """The share of the weights (or channels) removed."""

    sparsity: float

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Conv and Linear weights, except one tied to another module (an LM head that is also the
    token embedding table: pruning it is pruning the embeddings, and would untie them) and
    frozen ones (requires_grad False): constants of the architecture, not learned weights, such
    as YOLO's DFL convolution, whose 16 weights 0..15 decode box distances."""
    tied = tied_parameters(model)
    return [(m, "weight") for m in model.modules()
            if isinstance(m, PRUNABLE) and id(m.weight) not in tied and m.weight.requires_grad]


@register("prune_l1", Sparsity, family="pruning", example="0.5")
def prune_l1(config: Sparsity) -> Callable[[nn.Module, Context], Compressed]:
    sparsity = config.sparsity

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        for module, name in prunable_weights(model):
            prune.l1_unstructured(module, name, amount=sparsity)
            prune.remove(module, name)
        reestimate_batchnorm(model, ctx.calibration)
        return Compressed(model, "simulated", why_simulated=DENSE_WHY)

    transform.__doc__ = (f"Zero the {sparsity:.0%} smallest-magnitude weights of every layer, "
                         "then re-estimate BatchNorm statistics.")
    return transform


@register("prune_global", Sparsity, family="pruning", example="0.5")
def prune_global(config: Sparsity) -> Callable[[nn.Module, Context], Compressed]:
    sparsity = config.sparsity

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        params = prunable_weights(model)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
        for module, name in params:
            prune.remove(module, name)
        reestimate_batchnorm(model, ctx.calibration)
        return Compressed(model, "simulated", why_simulated=DENSE_WHY)

    transform.__doc__ = (f"Zero the {sparsity:.0%} smallest-magnitude weights across all layers, "
                         "then re-estimate BatchNorm statistics.")
    return transform
