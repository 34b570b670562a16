"""BatchNorm re-estimation: the statistics a weight-changing technique leaves stale.

A BatchNorm layer normalizes with the running mean and variance of the activations the
*original* weights produced. Pruning or factorizing the layers before it changes those
activations, and the stale statistics alone can collapse a network: measured on the
Fashion-MNIST MobileNetV2, `prune_global@0.5` scores 22 % top-1 with the old statistics and
89 % after re-estimating them on 512 calibration images, with no gradient step. Toolkits do the
same by default (NNCF calls it BatchNorm adaptation), so pruning and SVD here end with it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Recompute every BatchNorm's running statistics as the exact average over `batches`.

    Only the BatchNorm layers switch to training mode (dropout and the rest stay in eval), no
    weight changes, and nothing happens when there is no BatchNorm or no batch.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    batches = list(batches)
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative average over all batches seen
        m.train()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.eval()
