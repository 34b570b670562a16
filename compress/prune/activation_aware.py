"""Pruning that looks at the layer's inputs, as LLMs are pruned without retraining.

- `wanda@s` (Sun et al., 2023): a weight's importance is |w| times the L2 norm of its input
  feature over the calibration tokens; each output row loses its `s` least important weights.
- `sparsegpt@s` (Frantar & Alistarh, 2023): chooses the zeros block by block from the inverse
  Hessian of the layer's inputs (H = 2 X Xᵀ) and updates the weights that stay to absorb the
  error the zeros make, as GPTQ does for rounding.
- `wanda_2of4`, `sparsegpt_2of4`: the same with two zeros in every four consecutive inputs of a
  row (the 2:4 pattern that sparse tensor cores run).

Both prune every Linear except an LM head tied to the token embedding (that would prune the
embeddings), block by block: the inputs of a transformer block are taken from the model
whose earlier blocks are already pruned, as both papers do. The calibration batches are the
workload's held-out data. Zeros are stored densely here, so the cells are simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported, tied_parameters
from compress.calibration import blocks, input_statistics, inverse_hessian
from compress.prune.magnitude import DENSE_WHY
from compress.registry import register

SPARSEGPT_BLOCK = 128  # columns whose zeros are chosen together (the paper's block size)


@dataclass(frozen=True)
class Sparsity:
    """The share of each layer's weights zeroed."""

    sparsity: float

    def __post_init__(self):
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")


@register("wanda", Sparsity, family="pruning", example="0.5")
def wanda(config: Sparsity) -> Callable[[nn.Module, Context], Compressed]:
    sparsity = config.sparsity
    transform = _pruner("wanda", lambda w, stats: _wanda(w, stats, sparsity, None))
    transform.__doc__ = (f"Wanda: zero the {sparsity:.0%} of each output row's weights with the "
                         "least |weight| x input norm, calibrated on held-out data.")
    return transform


@register("sparsegpt", Sparsity, family="pruning", example="0.5")
def sparsegpt(config: Sparsity) -> Callable[[nn.Module, Context], Compressed]:
    sparsity = config.sparsity
    transform = _pruner("sparsegpt", lambda w, stats: _sparsegpt(w, stats, sparsity, None))
    transform.__doc__ = (f"SparseGPT: zero {sparsity:.0%} of the weights chosen from the inverse "
                         "Hessian of the inputs, the others updated to absorb the error.")
    return transform


def _pruner(name: str, prune_weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    def transform(model: nn.Module, ctx: Context) -> Compressed:
        batches = list(ctx.calibration)
        if not batches:
            raise Unsupported(f"{name} calibrates on Context.calibration, which is empty")
        layers = _prunable(model)
        if not layers:
            raise Unsupported(f"{name}: the model has no Linear layer to prune")
        tokens = 0
        for group in blocks(model, layers):
            stats = input_statistics(model, group, batches, outer=name == "sparsegpt")
            for layer in group:
                weight, (count, moment) = layer.weight.data, stats[layer]
                layer.weight.data = prune_weight(weight.float(), moment / count).to(weight.dtype)
                tokens = count
        return Compressed(model, "simulated", why_simulated=DENSE_WHY,
                          extras={"calibration_tokens": tokens})

    return transform


def _prunable(model: nn.Module) -> list[nn.Linear]:
    tied = tied_parameters(model)
    return [m for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in tied]


def _wanda(weight: torch.Tensor, mean_square: torch.Tensor, sparsity: float,
           n_of_m: tuple[int, int] | None) -> torch.Tensor:
    score = weight.abs() * mean_square.sqrt()
    if n_of_m:
        n, m = n_of_m
        groups = score.reshape(score.shape[0], -1, m)
        drop = groups.topk(n, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return weight * keep.reshape(weight.shape)
    k = int(weight.shape[1] * sparsity)
    drop = score.topk(k, dim=1, largest=False).indices
    return weight.scatter(1, drop, 0.0)


def _sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
               n_of_m: tuple[int, int] | None) -> torch.Tensor:
    """SparseGPT's algorithm 1 (the reference implementation's order of operations): the
    columns in blocks; in each, the zeros are the weights with the least w² / [H⁻¹]ᵢᵢ², and the
    error of each zeroed column is spread over the columns after it through H⁻¹."""
    w, h_inv = inverse_hessian(weight, hessian)
    columns = w.shape[1]
    for start in range(0, columns, SPARSEGPT_BLOCK):
        end = min(start + SPARSEGPT_BLOCK, columns)
        block, inv = w[:, start:end].clone(), h_inv[start:end, start:end]
        errors = torch.zeros_like(block)
        if n_of_m is None:
            score = block.square() / inv.diagonal().square()
            mask = score <= score.flatten().kthvalue(max(1, int(score.numel() * sparsity)))[0]
        else:
            mask = torch.zeros_like(block, dtype=torch.bool)
        for i in range(end - start):
            if n_of_m and i % n_of_m[1] == 0:
                n, m = n_of_m
                score = block[:, i:i + m].square() / inv.diagonal()[i:i + m].square()
                mask.scatter_(1, i + score.topk(n, dim=1, largest=False).indices, True)
            column = block[:, i]
            kept = column.masked_fill(mask[:, i], 0.0)
            error = (column - kept) / inv[i, i]
            block[:, i:] -= error.unsqueeze(1) @ inv[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return w


def _two_of_four(name: str, prune_weight) -> Callable[[nn.Module, Context], Compressed]:
    pruner = _pruner(name, lambda w, stats: prune_weight(w, stats, 0.5, (2, 4)))

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if any(layer.in_features % 4 for layer in _prunable(model)):
            raise Unsupported(f"{name}_2of4: a Linear's inputs do not divide into groups of 4")
        return pruner(model, ctx)

    return transform


wanda_2of4 = _two_of_four("wanda", _wanda)
wanda_2of4.__doc__ = ("Wanda 2:4: in every 4 consecutive inputs of each output row, zero the 2 "
                      "weights with the least |weight| x input norm.")
sparsegpt_2of4 = _two_of_four("sparsegpt", _sparsegpt)
sparsegpt_2of4.__doc__ = ("SparseGPT 2:4: two zeros in every 4 consecutive inputs of each row, "
                          "chosen and compensated through the inverse Hessian of the inputs.")
for _name, _transform in (("wanda_2of4", wanda_2of4), ("sparsegpt_2of4", sparsegpt_2of4)):
    register(_name, family="pruning")(_transform)
