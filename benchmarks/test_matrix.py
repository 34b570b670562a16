"""The matrix: every workload x technique cell of every family, judged against baselines.

Each test carries its family's mark (`-m language`) and its tier's (`full`); the scope is
checked as it is collected (benchmarks/workloads/__init__.py: `cells`).
"""

from benchmarks.harness.matrix import check_cell, check_reference, compressions, references


@references()
def test_reference(workload, bench_run):
    check_reference(bench_run, workload)


@compressions()
def test_compress(workload, technique, bench_run, benchmark):
    check_cell(bench_run, benchmark, workload, technique)
