"""The matrix tests benchmarks/test_matrix.py runs: the references, then the cells."""

from __future__ import annotations

import pytest
import torch

import compress
from benchmarks.harness.cell import as_input
from benchmarks.threads import threads
from benchmarks.workloads import cells


def references():
    """Parametrize a test over the workloads (their reference models), each marked with its
    family; a workload with no PR cell is loaded and scored only in the full tier."""
    tiers: dict[str, set[str]] = {}
    families: dict[str, str] = {}
    for cell in cells():
        tiers.setdefault(cell.workload, set()).add(cell.tier)
        families[cell.workload] = cell.family
    params = [pytest.param(workload, id=workload, marks=[
        getattr(pytest.mark, families[workload]),
        *([] if "pr" in tiers[workload] else [pytest.mark.full])])
        for workload in sorted(tiers)]
    return pytest.mark.parametrize("workload", params)


def compressions():
    """Parametrize a test over every cell, marked with its family; full-tier cells also get
    the `full` mark."""
    params = [pytest.param(cell.workload, cell.technique, id=f"{cell.workload}-{cell.technique}",
                           marks=[getattr(pytest.mark, cell.family),
                                  *([pytest.mark.full] if cell.tier == "full" else [])])
              for cell in cells()]
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
