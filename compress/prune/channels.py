"""Structured pruning: physically remove the lowest-L1 channels with Torch-Pruning's DepGraph."""

from __future__ import annotations

from collections.abc import Callable

import torch_pruning as tp
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.batchnorm import reestimate_batchnorm


def output_layer(model: nn.Module) -> nn.Module:
    """The last Conv/Linear in module order: its outputs are the model's, so it keeps them."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not layers:
        raise Unsupported("prune_channels: the model has no Conv2d or Linear layer")
    return layers[-1]


def prune_channels(sparsity: float) -> Callable[[nn.Module, Context], Compressed]:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.example_input is None:
            raise Unsupported("prune_channels needs Context.example_input to trace the graph")
        pruner = tp.pruner.MagnitudePruner(
            model,
            ctx.example_input[:1],
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=sparsity,
            ignored_layers=[output_layer(model)],
        )
        pruner.step()
        reestimate_batchnorm(model, ctx.calibration)
        return Compressed(model, "real")

    transform.__doc__ = (
        f"Remove {sparsity:.0%} of the channels of every prunable layer group (lowest L1 norm "
        "first), so the model really has fewer weights and FLOPs; the output layer is kept. "
        "BatchNorm statistics are then re-estimated."
    )
    return transform
