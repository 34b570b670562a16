"""Run one matrix cell: compress the reference, then measure both side by side."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import compress
from benchmarks.harness import selfcheck
from benchmarks.harness.measure import (
    Size,
    Timing,
    artifact_size,
    interleaved_latency,
    peak_batch_bytes,
)
from benchmarks.harness.provenance import provenance
from benchmarks.harness.record import Record
from benchmarks.threads import threads
from benchmarks.workloads.base import Score, Workload
from compress import kernels


@dataclass(frozen=True)
class Reference:
    """The reference model's own measurements, taken once per workload and run."""

    score: Score
    size: Size
    peak_memory_bytes: int
    picture: np.ndarray | None = None


def peak_memory_bytes(model: torch.nn.Module, x: torch.Tensor, size: Size, device: str) -> int:
    """Inference memory for one timing batch: resident weights plus the batch's peak."""
    return size.memory_bytes + peak_batch_bytes(lambda: model(x), device)


def measure_reference(workload: Workload, device: str) -> Reference:
    model = workload.model.to(device)
    size = artifact_size(model)
    return Reference(workload.evaluate(model, torch.float32), size,
                     peak_memory_bytes(model, workload.example_input.to(device), size, device),
                     workload.picture(model, torch.float32) if workload.picture else None)


def run_cell(workload: Workload, reference: Reference, technique_name: str, *, device: str,
             n_threads: int, bandwidth_gbps: float | None = None
             ) -> tuple[Record, compress.Compressed]:
    """Apply `technique_name` to the workload's reference and measure the three metrics.

    Raises compress.Unsupported when the technique cannot run here.
    """
    technique = compress.get(technique_name)
    ctx = compress.Context(
        device=device,
        calibration=[b.to(device) for b in workload.calibration],
        example_input=workload.example_input.to(device),
        finetune=workload.finetune,
        distill=workload.distill,
        student=workload.student,
        teach=workload.teach,
        evaluate=lambda candidate, dtype: workload.evaluate(candidate, dtype).value,
        source_file=workload.source_file,
    )
    reference_model = workload.model.to(device)
    with compression_cost() as cost:
        compressed = technique.apply(reference_model, ctx)  # calibration and recovery included
    model = on_device(compressed.model, device)
    score = workload.evaluate(model, compressed.input_dtype)
    x_ref = workload.example_input.to(device)
    x_comp = as_input(x_ref, compressed.input_dtype)
    time_reference, time_compressed = timed_calls(reference_model, model, x_ref, x_comp)
    timing = interleaved_latency(time_reference, time_compressed, device=device,
                                 n_threads=n_threads)
    probe_timings = {name: interleaved_latency(probe.call(reference_model), probe.call(model),
                                               device=device, n_threads=n_threads)
                     for name, probe in workload.probes.items()}
    with threads(n_threads), torch.inference_mode():
        timed_output, evaluated_output = time_compressed(), model(x_comp)
        ran = kernels.operators(model, x_comp) if technique.kernel else Counter()
    proof = kernels.proof(technique.kernel, ran) if technique.kernel else {}
    per_sample = {"reference": reference.score.per_sample, "compressed": score.per_sample}
    problems = (selfcheck.score_problems(per_sample) + selfcheck.timing_problems(timing)
                + [f"{name}: {p}" for name, t in probe_timings.items()
                   for p in selfcheck.timing_problems(t)]
                + selfcheck.output_problems(timed_output, evaluated_output)
                + selfcheck.kernel_problems(technique, compressed.execution, ran, proof))
    size = artifact_size(model)
    record = Record(
        workload=workload.name,
        technique=technique.name,
        family=technique.family,
        execution=compressed.execution,
        why_simulated=compressed.why_simulated,
        floor=workload.floor.value if workload.floor else None,
        metric=workload.metric,
        reference_metric=reference.score.value,
        compressed_metric=score.value,
        reference_size=reference.size,
        compressed_size=size,
        timing=timing,
        probe_timings=probe_timings,
        extras={**compressed.extras, **score.extras,
                **throughputs(workload, timing, probe_timings), **cost,  # not gated
                **roofline(workload, probe_timings, size, bandwidth_gbps)},
        reference_peak_memory_bytes=reference.peak_memory_bytes,
        compressed_peak_memory_bytes=peak_memory_bytes(model, x_comp, size, device),
        kernels=proof,
        provenance={**provenance(device, n_threads),
                    "reference_checkpoint_sha256": workload.checkpoint_sha256},
        workload_notes=workload.notes,
        self_check_problems=problems,
        per_sample=per_sample,
        fidelity=workload.fidelity,
        fidelity_per_sample=score.fidelity,
        resamplers={"reference": reference.score.resample, "compressed": score.resample},
        pictures={"reference": reference.picture,
                  "compressed": workload.picture(model, compressed.input_dtype)}
        if workload.picture else {},
    )
    return record, compressed


@contextmanager
def compression_cost() -> Iterator[dict[str, float]]:
    """What compressing took, filled in when the block ends: `compress_s` (seconds, calibration
    and recovery included) and `compress_peak_mib`, the most memory the process held above
    what it held before (Linux: the kernel's resident high-water mark, reset at the start;
    elsewhere not measured)."""
    cost: dict[str, float] = {}
    status, clear = Path("/proc/self/status"), Path("/proc/self/clear_refs")
    try:
        clear.write_text("5")  # resets VmHWM to the current resident size
        before = _status_kib(status, "VmRSS")
    except OSError:
        before = None
    start = time.perf_counter()
    yield cost
    cost["compress_s"] = round(time.perf_counter() - start, 2)
    if before is not None:
        cost["compress_peak_mib"] = round((_status_kib(status, "VmHWM") - before) / 1024, 1)


def _status_kib(status: Path, field: str) -> int:
    line = next(ln for ln in status.read_text().splitlines() if ln.startswith(f"{field}:"))
    return int(line.split()[1])


def on_device(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The model on `device`, moved only if it is not there: moving a bitsandbytes model with
    nn.Module.to (inside a wrapper, where transformers cannot intercept it) drops its
    quantization state, so a technique that placed its model already is trusted."""
    tensors = [*model.parameters(), *model.buffers()]
    if tensors and all(t.device == torch.device(device) for t in tensors):
        return model
    return model.to(device)


def as_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The timing batch for a model that computes in `dtype`: token ids stay integers."""
    return x.to(dtype) if x.is_floating_point() else x


def throughputs(workload: Workload, timing: Timing, probes: dict[str, Timing]
                ) -> dict[str, float]:
    """Items per second of the compressed model, e.g. `prefill_tok_per_s`, from the medians."""
    out = {}
    timed = [(*workload.timed_items, timing)] if workload.timed_items else []
    for name, items, unit, t in timed + [(n, p.items, p.unit, probes[n])
                                         for n, p in workload.probes.items()]:
        out[f"{name}_{unit}_per_s"] = items / (statistics.median(t.compressed_ms) / 1e3)
    return out


def roofline(workload: Workload, probes: dict[str, Timing], size: Size,
             bandwidth_gbps: float | None) -> dict[str, float]:
    """For each probe that streams every weight per item (decode): the weight bytes an item
    reads (the resident weights), the items/s the memory bandwidth allows at that, and the
    measured rate as a percentage of it."""
    out = {}
    for name, probe in workload.probes.items():
        if not probe.streams_weights or not bandwidth_gbps:
            continue
        per_item = size.memory_bytes
        allowed = bandwidth_gbps * 1e9 / per_item
        measured = probe.items / (statistics.median(probes[name].compressed_ms) / 1e3)
        out |= {f"{name}_bytes_per_{probe.unit}": per_item,
                f"{name}_roofline_{probe.unit}_per_s": round(allowed, 1),
                f"{name}_pct_of_roofline": round(100 * measured / allowed, 1)}
    return out


def timed_calls(reference_model: torch.nn.Module, model: torch.nn.Module, x_ref: torch.Tensor,
                x_comp: torch.Tensor) -> tuple[Callable[[], object], Callable[[], object]]:
    """What the timer calls: one forward pass of each model on the timing batch."""
    return (lambda: reference_model(x_ref)), (lambda: model(x_comp))
