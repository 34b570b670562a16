"""What the reader is told besides pass or fail: collapsed cells, real kernels slower than the
reference, speedups this run could not gate, a stack that is not the locked one."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.harness import provenance, report
from benchmarks.workloads.base import PERPLEXITY, chance_top1
from tests.test_verdict import make_record

RUN = {"hardware_class": "cpu-x86_64-avx2", "cpu": "test", "torch": "x", "threads": 1,
       "git_sha": "abc", "tier": "pr"}


def test_a_model_at_the_floor_is_collapsed_and_one_that_can_move_is_not():
    at_chance = make_record("prune_global@0.9", comp_metric=10.0)  # reference 91.0
    at_chance.floor = 10.0
    assert at_chance.collapsed
    barely = make_record("prune_global@0.8", comp_metric=13.0)  # keeps 3.7 % of 81 points
    barely.floor = 10.0
    assert barely.collapsed
    moving = make_record("prune_l1@0.8", comp_metric=20.5)  # keeps 13 %: it can still move
    moving.floor = 10.0
    assert not moving.collapsed
    assert not make_record(comp_metric=10.0).collapsed  # no floor known: never collapsed


def test_collapse_works_for_metrics_where_lower_is_better():
    record = make_record("svd@0.9", comp_metric=1.7e6)
    record.metric = PERPLEXITY
    record.reference_metric, record.floor = 24.1, 900.0
    assert record.collapsed  # far past the floor
    record.compressed_metric = 377.0  # worse, but still uses context
    assert not record.collapsed


def test_chance_is_the_most_common_label():
    assert chance_top1(torch.tensor([0, 1, 1, 2])).value == 50.0


def test_real_kernels_slower_than_the_reference_are_marked_not_failed(tmp_path):
    slow = make_record("bnb_nf4", speed=(10.0, 20.0))
    assert slow.slower == ["speedup"]
    assert make_record("int8_static", speed=(10.0, 5.0)).slower == []
    simulated = make_record("fp16", speed=(10.0, 100.0), execution="simulated")
    assert simulated.slower == []  # simulated speed is never claimed either way
    table = report.text_table([slow], {})
    assert "0.50x [0.50, 0.50] slower" in table
    md = report.write_markdown(tmp_path, [slow], {}, RUN).read_text()
    assert "w-bnb_nf4: slower than the reference: real execution, speedup 0.50x" in md


def test_collapsed_cells_are_marked_in_the_table_and_listed_in_the_report(tmp_path):
    record = make_record("prune_global@0.9", comp_metric=10.0)
    record.floor = 10.0
    assert "91.00 -> 10.00 collapsed" in report.text_table([record], {})
    md = report.write_markdown(tmp_path, [record], {}, RUN).read_text()
    assert "w-prune_global@0.9: collapsed: top1_pct 10 is at the task's floor 10" in md
    ledger = tmp_path / "ledger.json"
    report.write_ledger(ledger, [record], {}, RUN)
    assert json.loads(ledger.read_text())["cells"][0]["collapsed"] is True


def test_ungated_speedups_and_an_unlocked_stack_are_said_in_the_header(tmp_path):
    run = {**RUN, "speedups_not_gated": {
        "craft-text": "baseline is from cpu-x86_64-avx512vnni, this machine is cpu-x86_64-avx2",
        "smollm2-135m": "baseline is from cpu-x86_64-avx512vnni, this machine is cpu-x86_64-avx2"},
        "stack_drift": ["transformers 5.25.0 (locked 5.24.0)"]}
    [ungated, drift] = report.notices(run)
    assert ungated.startswith("Speedups reported, NOT GATED for craft-text, smollm2-135m: "
                              "baseline is from cpu-x86_64-avx512vnni")
    assert "transformers 5.25.0 (locked 5.24.0)" in drift
    md = report.write_markdown(tmp_path, [make_record()], {}, run).read_text()
    header = md.split("| workload |")[0]
    assert "NOT GATED for craft-text, smollm2-135m" in header and "stack.lock" in header
    assert report.notices(RUN) == []


def test_the_lock_is_read_and_drift_from_it_is_named(tmp_path, monkeypatch):
    lock = tmp_path / "stack.lock"
    lock.write_text("# made by uv\nTorch==2.14.1\n    # via x\nzstandard==0.25.0\n"
                    "nvidia-nccl-cu13==2.30.7 ; sys_platform == 'linux'\n")
    assert provenance.locked_versions(lock) == {"torch": "2.14.1", "zstandard": "0.25.0",
                                                "nvidia-nccl-cu13": "2.30.7"}
    installed = {"torch": "2.14.1+cu130", "zstandard": "0.24.0"}  # torch's build tag is fine

    def version(name):
        if name not in installed:
            raise provenance.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(provenance, "LOCK", lock)
    monkeypatch.setattr(provenance.metadata, "version", version)
    provenance.stack.cache_clear()
    try:
        found = provenance.stack()
    finally:
        provenance.stack.cache_clear()
    assert found["stack_drift"] == ["nvidia-nccl-cu13 not installed (locked 2.30.7)",
                                    "zstandard 0.24.0 (locked 0.25.0)"]
    assert len(found["stack_lock"]) == 12


@pytest.mark.skipif(not provenance.LOCK.exists(), reason="no stack.lock in this checkout")
def test_the_repository_lock_pins_the_libraries_that_shape_the_numbers():
    pins = provenance.locked_versions()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert {"transformers", "ultralytics", "bitsandbytes", "torchao", "peft", "onnxruntime",
            "numpy"} <= set(pins)
