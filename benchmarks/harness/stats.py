"""Statistics behind the verdicts: paired intervals for accuracy drop and speedup.

Both metrics come from paired data. Accuracy: the reference and the compressed model score
the same test samples, so the drop's uncertainty is that of the per-sample *differences*
(much smaller than two independent accuracies). Speedup: reference and compressed run in
alternating rounds, so each round gives one ratio; the speedup is their median.
Intervals are percentile bootstraps with a fixed seed, so a run's report is reproducible.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The metric of each row of an index matrix (rows, n) of test samples.
Resampled = Callable[[torch.Tensor], torch.Tensor]

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


def _quantiles(samples: torch.Tensor, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = torch.quantile(samples.double(), torch.tensor([tail, 1 - tail],
                                                               dtype=torch.float64))
    return float(low), float(high)


def paired_drop(reference: torch.Tensor, compressed: torch.Tensor, *,
                higher_is_better: bool = True,
                summary: Callable[[torch.Tensor], torch.Tensor] | None = None,
                metric_of: tuple[Resampled, Resampled] | None = None,
                level: float = LEVEL, resamples: int = RESAMPLES) -> Interval:
    """The drop of a metric that is the mean of per-sample values (or `summary` of that mean,
    such as exp for perplexity from per-window losses), with its interval.

    Resamples test samples (the same ones for both models), so agreement between the two
    models narrows the interval. For top-1 in percent, per-sample values are 100 or 0.
    A metric that is no function of a mean (mAP over images) gives `metric_of`: for each
    model, a function from an index matrix (rows, n) to the metric on each row's samples.
    """
    if reference.shape != compressed.shape or reference.ndim != 1:
        raise ValueError("paired_drop needs two 1-d per-sample tensors of the same length, got "
                         f"{tuple(reference.shape)} and {tuple(compressed.shape)}")
    n = reference.numel()
    if n == 0:
        raise ValueError("paired_drop: zero samples; the evaluation produced no outcomes")
    summarize = summary or (lambda mean: mean)
    sign = 1.0 if higher_is_better else -1.0
    ref, comp = reference.double(), compressed.double()
    ref_metric, comp_metric = metric_of or (lambda idx: summarize(ref[idx].mean(dim=1)),
                                            lambda idx: summarize(comp[idx].mean(dim=1)))

    def drop(idx: torch.Tensor) -> torch.Tensor:
        return sign * (ref_metric(idx).double() - comp_metric(idx).double())

    estimate = float(drop(torch.arange(n).unsqueeze(0))[0])
    gen = torch.Generator().manual_seed(SEED)
    drops = []
    chunk = max(1, 4_000_000 // n)  # bound the index matrix to ~32 MB
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drops.append(drop(torch.randint(n, (rows, n), generator=gen)))
    low, high = _quantiles(torch.cat(drops), level)
    return Interval(estimate, low, high)


def median_ratio(ratios: list[float], *, level: float = LEVEL,
                 resamples: int = RESAMPLES) -> Interval:
    """The median per-round ratio and its bootstrap interval (rounds resampled)."""
    if not ratios:
        raise ValueError("median_ratio: zero timing rounds")
    values = torch.tensor(ratios, dtype=torch.float64)
    gen = torch.Generator().manual_seed(SEED)
    idx = torch.randint(len(ratios), (resamples, len(ratios)), generator=gen)
    medians = torch.quantile(values[idx], 0.5, dim=1)  # the same median as statistics'
    low, high = _quantiles(medians, level)
    return Interval(statistics.median(ratios), low, high)
