"""The matrix tests every `benchmarks/test_<family>.py` runs: its references, then its cells."""

from __future__ import annotations

import pytest
import torch

import compress
from benchmarks.harness.cell import as_input
from benchmarks.harness.measure import threads
from benchmarks.workloads import cells


def references(family: str):
    """Parametrize a test over the family's workloads (their reference models); a workload
    with no PR cell is loaded and scored only in the full tier."""
    tiers: dict[str, set[str]] = {}
    for workload, _, tier in cells(family):
        tiers.setdefault(workload, set()).add(tier)
    params = [pytest.param(workload, id=workload,
                           marks=[] if "pr" in tiers[workload] else [pytest.mark.full])
              for workload in sorted(tiers)]
    return pytest.mark.parametrize("workload", params)


def compressions(family: str):
    """Parametrize a test over the family's cells; full-tier cells get the `full` mark."""
    params = [pytest.param(workload, technique, id=f"{workload}-{technique}",
                           marks=[pytest.mark.full] if tier == "full" else [])
              for workload, technique, tier in cells(family)]
    return pytest.mark.parametrize(("workload", "technique"), params)


def check_reference(bench_run, workload: str) -> None:
    """The reference model scores what its baseline says (a broken reference taints all)."""
    failures = [c.message for c in bench_run.judge_reference(workload) if c.failed]
    if failures and not bench_run.update_baselines:
        pytest.fail("\n".join(failures), pytrace=False)


def check_cell(bench_run, benchmark, workload: str, technique: str) -> None:
    """Measure one cell, hand its timing to pytest-benchmark, and fail on any regression."""
    try:
        record, compressed = bench_run.run(workload, technique)
    except compress.Unsupported as why:
        pytest.skip(str(why))
    # pytest-benchmark keeps the compressed model's latency stats (--benchmark-json), and
    # carries the whole record, so its own compare tooling sees every metric.
    model = compressed.model
    x = as_input(bench_run.workloads[workload].example_input.to(bench_run.device),
                 compressed.input_dtype)

    def infer():
        with torch.inference_mode():
            return model(x)

    benchmark.extra_info.update(record.to_json())
    with threads(bench_run.threads):
        benchmark.pedantic(infer, rounds=5, warmup_rounds=1)
    checks = bench_run.judge(record)
    failures = [c.message for c in checks if c.failed]
    if failures and not bench_run.update_baselines:
        pytest.fail("\n".join(failures), pytrace=False)
