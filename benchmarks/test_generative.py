"""The generative matrix: every workload x technique cell, judged against baselines."""

from benchmarks.harness.matrix import check_cell, check_reference, compressions, references

FAMILY = "generative"


@references(FAMILY)
def test_reference(workload, bench_run):
    check_reference(bench_run, workload)


@compressions(FAMILY)
def test_compress(workload, technique, bench_run, benchmark):
    check_cell(bench_run, benchmark, workload, technique)
