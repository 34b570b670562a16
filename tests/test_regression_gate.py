"""The gate catches a broken technique: plant a bug, run the real cell of the real workload
(fmnist-cnn, all 10,000 test images) and judge it against the repository's baselines, as
`nox -s bench` does. The first run trains and caches the CNN (about a minute)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

import compress
from benchmarks.harness import selfcheck
from benchmarks.harness.cell import measure_reference, run_cell
from benchmarks.harness.provenance import hardware_class
from benchmarks.harness.verdict import judge, load_baseline
from benchmarks.workloads import WORKLOADS
from compress.prune import magnitude
from compress.quant import static

WORKLOAD = "fmnist-cnn"


@pytest.fixture(scope="module")
def cnn():
    workload = WORKLOADS[WORKLOAD].load()
    baseline = load_baseline(WORKLOAD, hardware_class("cpu"))
    assert baseline is not None, f"no stored baseline for {WORKLOAD}: bless with nox -s baselines"
    return workload, measure_reference(workload, "cpu"), baseline


def judged(cnn, technique: str):
    workload, reference, baseline = cnn
    record, _ = run_cell(workload, reference, technique, device="cpu", n_threads=1)
    # Speed is not what these bugs break; judging it here would only add timing noise (and a
    # 95 %-zero model does run a little faster on dense kernels: see SIMULATED_SPEEDUP_LIMIT).
    # So are the timing self-checks: a compile worker of an earlier test can slow a first round.
    noise = set(selfcheck.timing_problems(record.timing))
    record.self_check_problems = [p for p in record.self_check_problems if p not in noise]
    checks = judge(record, baseline.cell(technique), speed_gated=False)
    return record, [c for c in checks if c.metric != "speedup"]


def four_bit_qconfig_mapping(_backend: str) -> QConfigMapping:
    """The bug we plant: int8_static quietly rounding to 4 bits (16 levels)."""
    qconfig = QConfig(
        activation=HistogramObserver.with_args(quant_min=0, quant_max=15, dtype=torch.quint8),
        weight=PerChannelMinMaxObserver.with_args(quant_min=-8, quant_max=7, dtype=torch.qint8,
                                                  qscheme=torch.per_channel_symmetric),
    )
    return QConfigMapping().set_global(qconfig)


def test_int8_static_rounding_to_4_bits_fails_the_gate(cnn, monkeypatch):
    monkeypatch.setattr(static, "get_default_qconfig_mapping", four_bit_qconfig_mapping)
    record, checks = judged(cnn, "int8_static")
    failed = [c for c in checks if c.failed]
    assert [c.metric for c in failed] == ["accuracy_drop"]
    gate = cnn[2].cell("int8_static")["accuracy_drop"]
    message = failed[0].message
    assert message.startswith(f"REGRESSED {WORKLOAD}-int8_static: accuracy_drop measured "
                              f"{record.accuracy_drop:.4g}, 95% CI")
    assert f"baseline {gate['value']:.4g} ± {gate['tolerance']:.4g}" in message


def test_pruning_95_instead_of_50_fails_the_gate(cnn, monkeypatch):
    entry = compress.registry.REGISTRY["prune_l1"]
    monkeypatch.setitem(compress.registry.REGISTRY, "prune_l1", dataclasses.replace(
        entry, make=lambda _config: magnitude.prune_l1(magnitude.Sparsity(0.95))))
    record, checks = judged(cnn, "prune_l1@0.5")
    assert record.compressed_size.nonzeros < 0.1 * record.reference_size.nonzeros
    assert [c.message for c in checks if c.failed and c.metric != "accuracy_drop"] == []
    assert [c.metric for c in checks if c.failed] == ["accuracy_drop"]


@pytest.mark.parametrize("technique", ["int8_static", "prune_l1@0.5"])
def test_unchanged_techniques_pass(cnn, technique):
    """A/A: the healthy techniques, measured again, pass their stored baselines."""
    _, checks = judged(cnn, technique)
    assert not [c.message for c in checks if c.failed]
