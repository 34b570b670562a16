"""`python -m benchmarks.harness.compare`: the verdicts from a ledger, without pytest."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness import compare, report
from benchmarks.harness.verdict import bless, reference_entry
from tests.test_verdict import sampled_record

RUN = {"hardware_class": "cpu-test", "cpu": "test", "torch": "x", "threads": 1,
       "git_sha": "abc", "tier": "pr", "stack_lock": "lock-a"}
WORKLOADS = {"w": {"reference": reference_entry("top1_pct", 90.0, True, "abc"),
                   "evaluation": {"definition": "10,000 images", "samples": 10_000,
                                  "fingerprint": "0123456789abcdef"}}}


@pytest.fixture
def ledger_and_baselines(tmp_path):
    record = sampled_record(lost=30)
    bless([record], WORKLOADS, "cpu-test", tmp_path / "baselines")
    ledger = tmp_path / "ledger.json"
    report.write_ledger(ledger, [record], {}, RUN, WORKLOADS)
    return ledger, tmp_path / "baselines"


def test_an_unchanged_ledger_passes(ledger_and_baselines, capsys):
    ledger, baselines = ledger_and_baselines
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 0
    # The cell's three gates, and its workload's front of one point.
    assert "4 checks, 0 failed" in capsys.readouterr().out


def test_a_regressed_ledger_fails_and_says_which_cell(ledger_and_baselines, capsys):
    ledger, baselines = ledger_and_baselines
    report.write_ledger(ledger, [sampled_record(lost=80)], {}, RUN)  # 0.5 pp more lost
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 1
    assert "REGRESSED w-int8_static: accuracy_drop measured 0.8, 95% CI" in \
        capsys.readouterr().out


def test_nan_and_missing_baselines_fail(ledger_and_baselines, tmp_path):
    ledger, baselines = ledger_and_baselines
    data = json.loads(ledger.read_text())
    data["cells"][0]["speedup"] = None  # NaN, as the ledger writes it
    ledger.write_text(json.dumps(data))
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 1
    assert compare.main([str(ledger), "--baselines", str(tmp_path / "empty")]) == 1


def test_an_unreadable_or_empty_ledger_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="cannot read ledger"):
        compare.main([str(tmp_path / "missing.json")])
    (tmp_path / "empty.json").write_text(json.dumps({"run": RUN, "cells": []}))
    with pytest.raises(SystemExit, match="has no cells"):
        compare.main([str(tmp_path / "empty.json")])


def test_a_ledger_against_an_older_ledger(ledger_and_baselines, tmp_path, capsys):
    old, _ = ledger_and_baselines
    new = tmp_path / "new.json"
    report.write_ledger(new, [sampled_record(lost=30)], {}, RUN)
    assert compare.main([str(new), "--against", str(old)]) == 0
    report.write_ledger(new, [sampled_record(lost=30, comp_bytes=263)], {}, RUN)  # 5 % larger
    assert compare.main([str(new), "--against", str(old)]) == 1
    assert "REGRESSED w-int8_static: size_ratio" in capsys.readouterr().out
    report.write_ledger(new, [sampled_record("fp16")], {}, RUN)
    assert compare.main([str(new), "--against", str(old)]) == 1
    assert "w-fp16: not in" in capsys.readouterr().out


@pytest.mark.parametrize(("provenance", "why"), [
    ({"stack_lock": "lock-0", "torch": "2.13.0"},
     "blessed on stack.lock lock-0, this run's is lock-a (`git log -p stack.lock` shows what "
     "moved) (torch 2.13.0 -> x)"),
    ({"stack_lock": None}, "blessed before the stack was locked"),
    ({"stack_drift": ["numpy 2.0 (locked 2.4.6)"]},
     "blessed on a stack that differed from its lock: numpy 2.0 (locked 2.4.6)"),
])
def test_a_baseline_blessed_on_another_stack_is_reported_stale(ledger_and_baselines, capsys,
                                                               provenance, why):
    ledger, baselines = ledger_and_baselines
    path = baselines / "cpu-test" / "w.json"
    data = json.loads(path.read_text())
    data["provenance"].update(provenance)
    data["provenance"] = {k: v for k, v in data["provenance"].items() if v is not None}
    path.write_text(json.dumps(data))
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 0  # reported only
    assert f"baseline {path} is stale: {why}; re-bless" in capsys.readouterr().out


def test_a_ledger_that_evaluated_something_else_fails(ledger_and_baselines, capsys):
    ledger, baselines = ledger_and_baselines
    data = json.loads(ledger.read_text())
    data["workloads"]["w"]["evaluation"].update(samples=9_000, fingerprint="fedcba9876543210")
    ledger.write_text(json.dumps(data))
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 1
    assert "w: this run evaluated 10,000 images (9000 samples, fingerprint fedcba9876543210)" \
        in capsys.readouterr().out


def test_a_lock_that_only_gained_packages_leaves_its_baselines_fresh(ledger_and_baselines,
                                                                     capsys, monkeypatch,
                                                                     tmp_path):
    """A baseline blessed on lock-0, whose pins were kept: the run's lock adds a package (not
    stale), then moves one the baseline was measured with (stale, naming it)."""
    from benchmarks.harness import verdict

    ledger, baselines = ledger_and_baselines
    path = baselines / "cpu-test" / "w.json"
    data = json.loads(path.read_text())
    data["provenance"]["stack_lock"] = "lock-0"
    path.write_text(json.dumps(data))
    (baselines / "locks").mkdir()
    (baselines / "locks" / "lock-0.txt").write_text("numpy==2.4.6\ntorch==2.14.1\n")
    lock = tmp_path / "stack.lock"
    monkeypatch.setattr(verdict, "LOCK", lock)

    lock.write_text("numpy==2.4.6\ntorch==2.14.1\nopenvino==2026.4.1\n")
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 0
    assert "is stale" not in capsys.readouterr().out

    lock.write_text("numpy==2.5.0\ntorch==2.14.1\nopenvino==2026.4.1\n")
    assert compare.main([str(ledger), "--baselines", str(baselines)]) == 0  # reported only
    assert (f"baseline {path} is stale: blessed on stack.lock lock-0, on which numpy was "
            "2.4.6 (now 2.5.0); re-bless") in capsys.readouterr().out


def test_bless_keeps_the_pins_of_the_lock_it_blessed_on(tmp_path, monkeypatch):
    from benchmarks.harness import verdict
    from benchmarks.harness.provenance import pins_digest

    lock = tmp_path / "stack.lock"
    lock.write_text("numpy==2.4.6  # via torch\ntorch==2.14.1\n")
    monkeypatch.setattr(verdict, "LOCK", lock)
    digest = pins_digest({"numpy": "2.4.6", "torch": "2.14.1"})
    record = sampled_record(lost=30)
    record.provenance["stack_lock"] = digest
    bless([record], WORKLOADS, "cpu-test", tmp_path / "baselines")
    assert (tmp_path / "baselines" / "locks" / f"{digest}.txt").read_text() == \
        "numpy==2.4.6\ntorch==2.14.1\n"
    record.provenance["stack_lock"] = "another"  # not the lock this tree holds: nothing kept
    bless([record], WORKLOADS, "cpu-test", tmp_path / "other")
    assert not (tmp_path / "other" / "locks").exists()
