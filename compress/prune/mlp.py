"""Structured pruning of transformer MLPs: remove hidden channels, so the layers really shrink.

A transformer MLP widens the hidden state and narrows it back: Llama's gate_proj and up_proj
(rows) then down_proj (columns), BERT's intermediate.dense then output.dense. Channel i of the
wide layer only feeds column i of the narrow one, so removing it from both is exact surgery:
nothing else in the model couples to it (unlike attention heads, tied to the head size, or
channels of the residual stream, shared by every block).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.prune.magnitude import Sparsity
from compress.registry import register

Slot = tuple[nn.Module, str]  # (parent module, attribute) of a Linear


def mlp_blocks(model: nn.Module) -> list[tuple[list[Slot], Slot]]:
    """(widening Linears, narrowing Linear) of every MLP block found (Llama- or BERT-style)."""
    blocks = []
    for m in model.modules():
        if all(isinstance(getattr(m, a, None), nn.Linear)
               for a in ("gate_proj", "up_proj", "down_proj")):
            blocks.append(([(m, "gate_proj"), (m, "up_proj")], (m, "down_proj")))
        inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
        wide = getattr(inter, "dense", None)
        narrow = getattr(out, "dense", None)
        if (isinstance(wide, nn.Linear) and isinstance(narrow, nn.Linear)
                and wide.out_features == narrow.in_features):
            blocks.append(([(inter, "dense")], (out, "dense")))
    return blocks


def _sliced(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """`layer` with only the `keep` outputs (dim 0) or inputs (dim 1)."""
    weight = layer.weight.detach().index_select(dim, keep)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None,
                    dtype=weight.dtype, device=weight.device)
    new.weight.data = weight.clone()
    if layer.bias is not None:
        bias = layer.bias.detach()
        new.bias.data = (bias.index_select(0, keep) if dim == 0 else bias).clone()
    return new


@register("prune_mlp", Sparsity, family="pruning", real_on=("cpu", "cuda"), example="0.5")
def prune_mlp(config: Sparsity) -> Callable[[nn.Module, Context], Compressed]:
    sparsity = config.sparsity

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        blocks = mlp_blocks(model)
        if not blocks:
            raise Unsupported("prune_mlp: no transformer MLP block (Llama gate/up/down_proj or "
                              "BERT intermediate/output) in the model")
        for wides, (parent, name) in blocks:
            narrow = getattr(parent, name)
            layers = [getattr(p, n) for p, n in wides]
            # A channel's weight: the product of its row norms in the widening layers and its
            # column norm in the narrowing one (its output scales with each of them).
            score = narrow.weight.detach().float().norm(dim=0)
            for layer in layers:
                score = score * layer.weight.detach().float().norm(dim=1)
            width = score.numel()
            keep = score.topk(width - round(sparsity * width)).indices.sort().values
            for (p, n), layer in zip(wides, layers, strict=True):
                setattr(p, n, _sliced(layer, keep, 0))
            setattr(parent, name, _sliced(narrow, keep, 1))
        # The config describes the shape: saved and loaded again, or written to GGUF (whose
        # feed_forward_length comes from it), the model must say its MLPs are narrower now.
        config = getattr(model, "config", None)
        if hasattr(config, "intermediate_size"):
            config.intermediate_size = getattr(*blocks[0][1]).in_features
        return Compressed(model, "real")

    transform.__doc__ = (f"Remove {sparsity:.0%} of each transformer MLP's hidden channels (the "
                         "lowest product of weight norms), from the widening and the narrowing "
                         "layers alike: fewer weights and FLOPs for real.")
    return transform
