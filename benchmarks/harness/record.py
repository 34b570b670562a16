"""A record: one matrix cell's measured facts, with units and directions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch

from benchmarks.harness.measure import Size, Timing
from benchmarks.harness.stats import Interval, median_ratio, paired_drop
from benchmarks.workloads.base import Metric

# A compressed model keeping less of its reference's distance from the task's floor than this
# has collapsed (MobileNetV2 pruned 90 % scores chance, 10.00 % top-1, whatever the pruning).
COLLAPSED_SHARE = 0.05


def collapsed(reference: float, compressed: float, floor: float | None) -> bool:
    """The compressed model kept less than COLLAPSED_SHARE of the reference's distance from
    the task's floor (or fell past it): whatever the technique does, it scores the same."""
    if floor is None or reference == floor:
        return False
    return (compressed - floor) / (reference - floor) < COLLAPSED_SHARE


@dataclass
class Record:
    workload: str
    technique: str
    family: str
    execution: str  # "real" or "simulated"
    metric: Metric  # the task metric, e.g. TOP1 (written as its name)
    reference_metric: float
    compressed_metric: float
    reference_size: Size
    compressed_size: Size
    timing: Timing  # of the timing batch
    # Resident weights plus one timing batch's peak allocations (measure.peak_batch_bytes).
    reference_peak_memory_bytes: int
    compressed_peak_memory_bytes: int
    provenance: dict
    why_simulated: str = ""
    # The metric of a model that learned nothing (Workload.floor), if the task has one.
    floor: float | None = None
    # The workload's probes (e.g. LLM decoding), timed the same way: gated as <name>_speedup.
    probe_timings: dict[str, Timing] = field(default_factory=dict)
    # Reported beside the metric, not gated: the Score's extras, throughputs.
    extras: dict[str, float] = field(default_factory=dict)
    # The workload's notes on its reference and data (Workload.notes).
    workload_notes: dict = field(default_factory=dict)
    # The operators that ran and prove the technique's low-bit execution, with their counts
    # (compress/kernels.py); empty for a technique with nothing to prove.
    kernels: dict[str, int] = field(default_factory=dict)
    # What the benchmark's self-checks found wrong with this measurement (selfcheck.py).
    self_check_problems: list[str] = field(default_factory=list)
    # The paired outcomes the metrics came from (kept in memory for tests; not serialized),
    # and for metrics that need them, each model's Score.resample.
    per_sample: dict = field(default_factory=dict, repr=False)
    resamplers: dict = field(default_factory=dict, repr=False)
    # The workload's fidelity metrics (Workload.fidelity), written as their names, and each
    # one's per-sample values (Score.fidelity), not serialized (their means are).
    fidelity: tuple[Metric, ...] = ()
    fidelity_per_sample: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # The workload's picture of each model's output ("reference", "compressed"), for the
    # report; not serialized.
    pictures: dict = field(default_factory=dict, repr=False)

    @property
    def cell(self) -> str:
        return f"{self.workload}-{self.technique}"

    @property
    def higher_is_better(self) -> bool:  # of the task metric
        return self.metric.higher_is_better

    @property
    def accuracy_drop(self) -> float:
        """How much worse the task metric got, in its own unit (pp for top1_pct)."""
        delta = self.reference_metric - self.compressed_metric
        return delta if self.higher_is_better else -delta

    @property
    def size_ratio(self) -> float:
        """Reference bytes / compressed bytes of the saved artifact: 4.0 = four times smaller."""
        return self.reference_size.size_bytes / self.compressed_size.size_bytes

    @property
    def gzip_ratio(self) -> float:
        return self.reference_size.gzip_bytes / self.compressed_size.gzip_bytes

    @property
    def speedup(self) -> float:
        return self.timing.speedup

    @property
    def speedup_iqr(self) -> tuple[float, float]:
        return self.timing.speedup_iqr

    @cached_property
    def drop_interval(self) -> Interval | None:
        """The accuracy drop with its paired-bootstrap 95 % interval (None without samples)."""
        ref, comp = self.per_sample.get("reference"), self.per_sample.get("compressed")
        if ref is None or comp is None or ref.numel() == 0:
            return None
        metric_of = (self.resamplers.get("reference"), self.resamplers.get("compressed"))
        return paired_drop(ref, comp, higher_is_better=self.higher_is_better,
                           summary=self.metric.summary,
                           metric_of=metric_of if all(metric_of) else None)

    @property
    def measured_fidelity(self) -> list[tuple[Metric, torch.Tensor]]:
        """Each declared fidelity metric this cell measured, with its per-sample values."""
        return [(m, self.fidelity_per_sample[m.name]) for m in self.fidelity
                if m.name in self.fidelity_per_sample]

    @cached_property
    def fidelity_intervals(self) -> dict[str, Interval]:
        """Each fidelity metric's mean with its bootstrap 95 % interval (samples resampled)."""
        return {m.name: paired_drop(torch.zeros_like(values), values, higher_is_better=False)
                for m, values in self.measured_fidelity}

    @cached_property
    def speedup_interval(self) -> Interval:
        """The median per-round speedup with its bootstrap 95 % interval."""
        return median_ratio(self.timing.ratios)

    @cached_property
    def speedup_intervals(self) -> dict[str, Interval]:
        """Every gated speedup (the timing batch's and each probe's) with its interval."""
        return {"speedup": self.speedup_interval,
                **{f"{name}_speedup": median_ratio(t.ratios)
                   for name, t in self.probe_timings.items()}}

    @property
    def collapsed(self) -> bool:
        return collapsed(self.reference_metric, self.compressed_metric, self.floor)

    @property
    def slower(self) -> list[str]:
        """The gated speedups of a real execution whose whole interval lies below 1.0: a
        finding to report (slower than the reference), not a failure."""
        if self.execution != "real":
            return []
        return [m for m, interval in self.speedup_intervals.items() if interval.high < 1.0]

    @property
    def memory_ratio(self) -> float:
        """Reference peak inference memory / compressed: 2.0 = needs half the memory."""
        return self.reference_peak_memory_bytes / self.compressed_peak_memory_bytes

    def gated(self) -> dict[str, float]:
        """The numbers the verdicts judge: the paper's three, each probe's speedup, and each
        fidelity metric the workload declares."""
        return {"accuracy_drop": self.accuracy_drop, "size_ratio": self.size_ratio,
                "speedup": self.speedup,
                **{f"{name}_speedup": t.speedup for name, t in self.probe_timings.items()},
                **{m.name: float(values.mean()) for m, values in self.measured_fidelity}}

    def declared_gates(self) -> dict[str, tuple[float, bool]]:
        """(tolerance, higher_is_better) of each gate whose metric the workload declares: the
        task metric's drop, and each fidelity metric's value."""
        return {"accuracy_drop": (self.metric.tolerance_at(self.compressed_metric), False),
                **{m.name: (m.tolerance_at(float(values.mean())), m.higher_is_better)
                   for m, values in self.measured_fidelity}}

    def iqr(self, metric: str) -> tuple[float, float]:
        """The per-round interquartile range of a gated speedup."""
        if metric == "speedup":
            return self.speedup_iqr
        return self.probe_timings[metric.removesuffix("_speedup")].speedup_iqr

    def __getstate__(self) -> dict:
        # Resamplers are often local lambdas (YOLO's mAP), which pickle cannot save: a sharded
        # run's worker computes the cached intervals that need them, and sends those instead.
        self.drop_interval, self.speedup_intervals, self.fidelity_intervals  # noqa: B018
        return {**self.__dict__, "resamplers": {}}

    def to_json(self) -> dict:
        in_memory = ("per_sample", "resamplers", "pictures", "fidelity_per_sample", "metric",
                     "fidelity")
        out = {k: v for k, v in asdict(self).items() if k not in in_memory}
        out.update(metric=self.metric.name, higher_is_better=self.higher_is_better,
                   fidelity=[m.name for m in self.fidelity],
                   declared_gates={name: {"tolerance": tolerance, "higher_is_better": higher}
                                   for name, (tolerance, higher) in self.declared_gates().items()})
        out["timing"]["speedup"] = self.speedup
        out["timing"]["speedup_iqr"] = list(self.timing.speedup_iqr)
        out["timing"]["reference_median_ms"] = _median(self.timing.reference_ms)
        out["timing"]["compressed_median_ms"] = _median(self.timing.compressed_ms)
        for key in ("reference_size", "compressed_size"):
            out[key]["bits_per_weight"] = getattr(self, key).bits_per_weight
        for name, timing in self.probe_timings.items():
            out["probe_timings"][name].update(
                speedup=timing.speedup, speedup_iqr=list(timing.speedup_iqr),
                reference_median_ms=_median(timing.reference_ms),
                compressed_median_ms=_median(timing.compressed_ms))
        out.update(self.gated())
        out.update(cell=self.cell, gzip_ratio=self.gzip_ratio, memory_ratio=self.memory_ratio,
                   collapsed=self.collapsed, slower=self.slower,
                   **{f"{metric}_ci": [interval.low, interval.high]
                      for metric, interval in self.speedup_intervals.items()})
        if self.drop_interval is not None:
            out["accuracy_drop_ci"] = [self.drop_interval.low, self.drop_interval.high]
        for name, interval in self.fidelity_intervals.items():
            out[f"{name}_ci"] = [interval.low, interval.high]
        return _finite_or_none(out)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _finite_or_none(value):
    """JSON has no NaN: write null, so a broken measurement is visible rather than invalid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value
