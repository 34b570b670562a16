"""The gate catches a broken technique: mutate a technique, run the real cell, judge it."""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

from benchmarks.harness.cell import measure_reference, run_cell
from benchmarks.harness.verdict import bless, load_baseline, reference_entry
from compress.quant import static
from tests.digits import digits_workload


@pytest.fixture(scope="module")
def blessed(tmp_path_factory):
    """Baselines blessed from the healthy techniques on the digits workload."""
    root = tmp_path_factory.mktemp("baselines")
    workload = digits_workload()
    reference = measure_reference(workload, "cpu")
    records = [run_cell(workload, reference, t, device="cpu", n_threads=1)[0]
               for t in ("int8_static", "prune_l1@0.5")]
    refs = {workload.name: reference_entry("top1_pct", reference.score.value, True, "test")}
    bless(records, refs, "cpu-test", root)
    return workload, reference, load_baseline(workload.name, "cpu-test", root)


def four_bit_qconfig_mapping(_backend: str) -> QConfigMapping:
    """The bug we plant: int8_static quietly rounding to 4 bits (16 levels)."""
    qconfig = QConfig(
        activation=HistogramObserver.with_args(quant_min=0, quant_max=15, dtype=torch.quint8),
        weight=PerChannelMinMaxObserver.with_args(quant_min=-8, quant_max=7, dtype=torch.qint8,
                                                  qscheme=torch.per_channel_symmetric),
    )
    return QConfigMapping().set_global(qconfig)


def test_int8_static_rounding_to_4_bits_fails_the_gate(blessed, monkeypatch):
    workload, reference, baseline = blessed
    monkeypatch.setattr(static, "get_default_qconfig_mapping", four_bit_qconfig_mapping)
    record, _ = run_cell(workload, reference, "int8_static", device="cpu", n_threads=1)
    from benchmarks.harness.verdict import judge

    checks = judge(record, baseline.cell("int8_static"), speed_gated=False)
    failed = [c for c in checks if c.failed]
    assert [c.metric for c in failed] == ["accuracy_drop"]
    message = failed[0].message
    gate = baseline.cell("int8_static")["accuracy_drop"]
    assert "digits-mlp-int8_static" in message and "accuracy_drop" in message
    assert f"baseline {gate['value']:.4g}" in message and f"± {gate['tolerance']:.4g}" in message
    assert f"measured {record.accuracy_drop:.4g}" in message


def test_pruning_95_instead_of_50_fails_the_gate(blessed):
    workload, reference, baseline = blessed
    from benchmarks.harness.verdict import judge

    record, _ = run_cell(workload, reference, "prune_l1@0.95", device="cpu", n_threads=1)
    checks = judge(record, baseline.cell("prune_l1@0.5"), speed_gated=False)
    assert "accuracy_drop" in [c.metric for c in checks if c.failed]


def test_healthy_rerun_passes(blessed):
    """A/A: the same techniques measured again pass against what they blessed."""
    workload, reference, baseline = blessed
    from benchmarks.harness.verdict import judge

    for technique in ("int8_static", "prune_l1@0.5"):
        record, _ = run_cell(workload, reference, technique, device="cpu", n_threads=1)
        checks = judge(record, baseline.cell(technique), speed_gated=False)
        assert not [c.message for c in checks if c.failed]
