"""k-means weight sharing (palettization), as Deep Compression (Han et al., 2016) and Core ML's
`palettize_weights` do it: `kmeans@k` clusters each Linear and Conv2d weight into `k` values
(`per=tensor`, one palette per weight; `per=channel`, one per output channel), and each weight
keeps only the index of its value.

Stored for real: the indices packed two to a byte for k <= 16 (one byte each up to 256) and
the palette in fp32, so the artifact is smaller without gzip (16 values: about 8x on the
weights). The forward pass rebuilds each weight from palette and indices on every call, since
torch has no palette kernel: the cell is simulated. A recovery after it (`+ft`) trains the
palettes, never the indices, so the weights stay shared (Deep Compression's centroid
fine-tuning); biases and norms train as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from compress.base import Compressed, Context, Unsupported, tied_parameters
from compress.batchnorm import reestimate_batchnorm
from compress.registry import register

ITERATIONS = 25  # Lloyd steps; 1-D k-means settles well before this on trained weights


@dataclass(frozen=True)
class KMeans:
    """How many values each palette holds, and what shares one palette."""

    clusters: int
    per: Literal["tensor", "channel"] = "tensor"

    def __post_init__(self):
        if not 2 <= self.clusters <= 256:
            raise ValueError(f"clusters must be in [2, 256] (indices are stored in at most a "
                             f"byte), got {self.clusters}")


@register("kmeans", KMeans, family="sharing", real_on=(), keeps={"shared"}, example="16")
def kmeans(config: KMeans) -> Callable[[nn.Module, Context], Compressed]:
    def transform(model: nn.Module, ctx: Context) -> Compressed:
        holder = nn.Sequential(model)  # only children are replaced: a bare layer is too
        tied = tied_parameters(holder)
        shared = 0
        for parent in list(holder.modules()):
            for name, child in parent.named_children():
                weight = getattr(child, "weight", None)
                if (type(child) not in (nn.Linear, nn.Conv2d) or id(weight) in tied
                        or not weight.requires_grad):  # tied to an embedding; frozen
                    continue
                setattr(parent, name, Palettized(child, config.clusters, config.per))
                shared += 1
        if not shared:
            raise Unsupported("kmeans: the model has no Linear or Conv2d weight to share")
        reestimate_batchnorm(holder[0], ctx.calibration)
        return Compressed(holder[0], "simulated", why_simulated=REBUILT)

    transform.__doc__ = (f"k-means weight sharing: each Linear and Conv2d weight as "
                         f"{config.clusters} values per {config.per} and a packed index per "
                         "weight; BatchNorm statistics re-estimated.")
    return transform


REBUILT = "each weight is rebuilt from its palette on every call: no palette kernel runs"


class Palettized(nn.Module):
    """A Linear or Conv2d whose weight is `codebook[group, index]`: the palette of each group
    (the whole weight, or one output channel) and a packed index per weight."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, clusters: int, per: str):
        super().__init__()
        weight = layer.weight.detach().float()
        self.shape, self.clusters = tuple(weight.shape), clusters
        self.conv = ({"stride": layer.stride, "padding": layer.padding,
                      "dilation": layer.dilation, "groups": layer.groups}
                     if isinstance(layer, nn.Conv2d) else None)
        rows = weight.reshape(1 if per == "tensor" else weight.shape[0], -1)
        codebook, index = cluster(rows, clusters)
        self.codebook = nn.Parameter(codebook.to(layer.weight.dtype))
        self.register_buffer("index", pack(index, clusters))
        self.bias = layer.bias

    @property
    def weight(self) -> torch.Tensor:
        index = unpack(self.index, self.clusters, self.numel())
        rows = index.reshape(self.codebook.shape[0], -1)  # one row per palette
        return self.codebook.gather(1, rows).reshape(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.linear(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, **self.conv)

    def logical_weights(self) -> dict[str, int]:
        """The weights each state-dict entry stands for (a palette is metadata: 0)."""
        return {"index": self.numel(), "codebook": 0}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, clusters={self.clusters}, palettes={self.codebook.shape[0]}"


def cluster(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means of each row: (palettes (rows, k), the index of each value's (rows, n)).

    Lloyd's algorithm from quantiles of the row's values: in one dimension the nearest
    centroid is found by the midpoints between sorted centroids, so each step is a sorted
    search.
    """
    centroids = torch.stack([_quantiles(row, k) for row in rows])  # (rows, k), sorted
    index = _nearest(centroids, rows)
    for _ in range(ITERATIONS):
        sums = torch.zeros_like(centroids).scatter_add_(1, index, rows)
        counts = torch.zeros_like(centroids).scatter_add_(1, index, torch.ones_like(rows))
        # An empty cluster keeps its centroid; sorting keeps the midpoints in order.
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids).sort(1).values
        new = _nearest(centroids, rows)
        if torch.equal(new, index):
            break
        index = new
    return centroids, index


def _quantiles(row: torch.Tensor, k: int) -> torch.Tensor:
    """k of the row's distinct values, evenly spaced in their order (all of them if there are
    no more than k, the last repeated): a row with few values is kept exactly."""
    values = torch.unique(row)
    if len(values) <= k:
        return torch.cat([values, values[-1:].expand(k - len(values))])
    return values[torch.linspace(0, len(values) - 1, k).round().long()]


def _nearest(centroids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    midpoints = (centroids[:, 1:] + centroids[:, :-1]) / 2
    return torch.searchsorted(midpoints.contiguous(), rows.contiguous())


def pack(index: torch.Tensor, clusters: int) -> torch.Tensor:
    """Indices as bytes: two to a byte (low nibble first) when they fit in 4 bits."""
    flat = index.flatten().to(torch.uint8)
    if clusters > 16:
        return flat
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack(packed: torch.Tensor, clusters: int, n: int) -> torch.Tensor:
    if clusters > 16:
        return packed.long()
    return torch.stack([packed & 15, packed >> 4], dim=1).flatten()[:n].long()
