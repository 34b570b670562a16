"""The image-classification matrix: every workload x technique cell, judged against baselines."""

from __future__ import annotations

import pytest
import torch

import compress
from benchmarks.harness.measure import threads
from benchmarks.workloads import cells

FAMILY = "classification"
CELLS = cells(FAMILY)


def _params():
    for workload, technique, tier in CELLS:
        marks = [pytest.mark.full] if tier == "full" else []
        yield pytest.param(workload, technique, id=f"{workload}-{technique}", marks=marks)


@pytest.mark.parametrize("workload", sorted({w for w, _, _ in CELLS}))
def test_reference(workload, bench_run):
    """The reference model scores what its baseline says (a broken reference taints all)."""
    check = bench_run.judge_reference(workload)
    if bench_run.update_baselines:
        return
    if check.failed:
        pytest.fail(check.message, pytrace=False)


@pytest.mark.parametrize(("workload", "technique"), list(_params()))
def test_compress(workload, technique, bench_run, benchmark):
    try:
        record, compressed = bench_run.run(workload, technique)
    except compress.Unsupported as why:
        pytest.skip(str(why))
    # pytest-benchmark keeps the compressed model's latency stats (--benchmark-json), and
    # carries the whole record, so its own compare tooling sees every metric.
    model, x = compressed.model, bench_run.workloads[workload].example_input
    x = x.to(bench_run.device, compressed.input_dtype)

    def infer():
        with torch.inference_mode():
            return model(x)

    benchmark.extra_info.update(record.to_json())
    with threads(bench_run.threads):
        benchmark.pedantic(infer, rounds=5, warmup_rounds=1)
    checks = bench_run.judge(record)
    if bench_run.update_baselines:
        return
    failures = [c.message for c in checks if c.failed]
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
