"""Low-rank factorization: replace a layer by two thinner ones from its truncated SVD."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.base import Compressed, Context, tied_parameters
from compress.batchnorm import reestimate_batchnorm
from compress.registry import register


@dataclass(frozen=True)
class Energy:
    """The share of each layer's spectral energy (sum of squared singular values) kept."""

    energy: float

    def __post_init__(self):
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep `energy` of the sum of their squares."""
    power = singular_values.double().pow(2)
    kept = power.cumsum(0) / power.sum()
    return min(int(torch.searchsorted(kept, kept.new_tensor(energy)).item()) + 1,
               len(singular_values))


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    first.weight.data = (s[:rank, None] * vh[:rank]).contiguous()
    second.weight.data = u[:, :rank].contiguous()
    if layer.bias is not None:
        second.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, second)


def factorize_conv(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """A k x k conv to `rank` channels, then a 1x1 conv back to the output channels."""
    out_ch = layer.out_channels
    u, s, vh = torch.linalg.svd(layer.weight.detach().reshape(out_ch, -1), full_matrices=False)
    first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, bias=False, padding_mode=layer.padding_mode)
    second = nn.Conv2d(rank, out_ch, 1, bias=layer.bias is not None)
    first.weight.data = (s[:rank, None] * vh[:rank]).reshape(rank, *layer.weight.shape[1:])
    second.weight.data = u[:, :rank].reshape(out_ch, rank, 1, 1).contiguous()
    if layer.bias is not None:
        second.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, second)


def _factorized(layer: nn.Module, energy: float) -> nn.Module | None:
    """The factorized layer, or None when it would not have fewer parameters."""
    if isinstance(layer, nn.Linear):
        n_out, n_in = layer.weight.shape
        factorize = factorize_linear
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
        n_out, n_in = layer.out_channels, layer.weight[0].numel()
        factorize = factorize_conv
    else:
        return None
    s = torch.linalg.svdvals(layer.weight.detach().reshape(n_out, -1))
    rank = rank_for_energy(s, energy)
    if rank * (n_in + n_out) >= n_in * n_out:
        return None
    return factorize(layer, rank)


@register("svd", Energy, family="low-rank", real_on=("cpu", "cuda"), example="0.9")
def svd(config: Energy) -> Callable[[nn.Module, Context], Compressed]:
    energy = config.energy

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        # Only children are replaced, so wrap the model: a bare Linear/Conv2d is factorized too.
        holder = nn.Sequential(model)
        tied = tied_parameters(holder)  # an LM head tied to the embeddings stays whole
        for parent in list(holder.modules()):
            for child_name, child in parent.named_children():
                weight = getattr(child, "weight", None)
                if id(weight) in tied or (weight is not None and not weight.requires_grad):
                    continue  # tied, or frozen: a constant of the architecture (YOLO's DFL)
                replacement = _factorized(child, energy)
                if replacement is not None:
                    setattr(parent, child_name, replacement)
        reestimate_batchnorm(holder[0], ctx.calibration)
        return Compressed(holder[0], "real")

    transform.__doc__ = (
        f"Factorize every Linear and dense Conv2d by truncated SVD keeping {energy:.0%} of the "
        "spectral energy, where that saves parameters (depthwise convolutions are left alone); "
        "then re-estimate BatchNorm statistics."
    )
    return transform
