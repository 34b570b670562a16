"""What each Linear layer sees on the calibration batches, for the methods that fit a layer
to its inputs (Wanda, SparseGPT, GPTQ): per-feature second moments or the full X Xᵀ, gathered
transformer block by transformer block so that a block's inputs come from the model with the
blocks before it already compressed, as those papers do."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

PERCDAMP = 0.01  # damping of X Xᵀ before inverting it: 1 % of its mean diagonal (GPTQ's)


def blocks(model: nn.Module, layers: list[nn.Linear]) -> Iterator[list[nn.Linear]]:
    """The layers in groups compressed together: each item of the model's longest ModuleList
    (a transformer's blocks) in order, then whatever lies outside them."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    items = list(max(lists, key=len)) if lists else []
    done: set[nn.Module] = set()
    for item in items:
        group = [m for m in item.modules() if m in layers]
        done.update(group)
        if group:
            yield group
    rest = [m for m in layers if m not in done]
    if rest:
        yield rest


def input_statistics(model: nn.Module, layers: list[nn.Linear], batches: list[torch.Tensor],
                     *, outer: bool) -> dict[nn.Linear, tuple[int, torch.Tensor]]:
    """Per layer, (inputs seen, Σ x² per input feature), or with `outer` (inputs seen, Σ x xᵀ),
    over the calibration batches run through the model as it now is."""
    stats = {layer: [0, 0.0] for layer in layers}

    def hook(layer, inputs, _output):
        x = inputs[0].detach().reshape(-1, layer.in_features).float()
        stats[layer][0] += x.shape[0]
        stats[layer][1] = stats[layer][1] + (x.T @ x if outer else x.square().sum(0))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: (count, moment) for layer, (count, moment) in stats.items()}


def inverse_hessian(weight: torch.Tensor, xxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weight with the columns of dead inputs zeroed, the upper Cholesky factor of the
    inverse of the damped H = X Xᵀ): what GPTQ and SparseGPT walk the columns with."""
    w, h = weight.clone(), xxt.clone()
    dead = h.diagonal() == 0  # inputs that never fired: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(PERCDAMP * h.diagonal().mean())
    return w, torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
