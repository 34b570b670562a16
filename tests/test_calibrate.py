"""Noise calibration: the between-run spread sets the speedup gate, which then catches a 10 %
slowdown and passes an unchanged cell."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.harness import calibrate, report
from benchmarks.harness.measure import Timing
from benchmarks.harness.verdict import (
    CALIBRATED_FLOOR,
    baseline_entry,
    bless,
    judge,
    reference_entry,
)
from tests.test_verdict import make_record

REFS = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}

RUN = {"hardware_class": "cpu-test", "cpu": "test", "torch": "x", "threads": 1,
       "git_sha": "abc", "tier": "pr"}


def noisy_record(*, seed: int, slowdown: float = 1.0, noise: float = 0.03, rounds: int = 15):
    """int8_static at a true 2x, each round's latencies disturbed by `noise` (relative sd)."""
    gen = torch.Generator().manual_seed(seed)
    jitter = 1 + noise * torch.randn(2, rounds, generator=gen)
    record = make_record()
    record.timing = Timing((10.0 * jitter[0]).tolist(), (5.0 * slowdown * jitter[1]).tolist(), 1)
    return record


@pytest.fixture
def calibrated(tmp_path):
    """A baseline blessed from one run, then calibrated on three more runs of the same tree."""
    root = tmp_path / "baselines"
    bless([noisy_record(seed=0)], REFS, "cpu-test", root)
    ledgers = []
    for seed in (1, 2, 3):
        path = tmp_path / f"run-{seed}.json"
        report.write_ledger(path, [noisy_record(seed=seed)], {}, RUN)
        ledgers.append(path)
    lines = calibrate.calibrate(ledgers, root)
    return root / "cpu-test" / "w.json", lines


def test_calibration_stores_the_spread_and_derives_the_tolerance(calibrated):
    path, lines = calibrated
    cell = json.loads(path.read_text())["cells"]["int8_static"]
    cal = cell["calibration"]
    assert cal["runs"] == 3 and cal["git_sha"] == "abc" and len(cal["speedups"]) == 3
    assert cell["speedup"]["value"] == pytest.approx(sorted(cal["speedups"])[1], abs=1e-4)
    relative = cell["speedup"]["tolerance"] / cell["speedup"]["value"]
    assert relative == pytest.approx(max(CALIBRATED_FLOOR, 3 * cal["rel_sd"]), abs=1e-3)
    assert relative < 0.15  # tight enough to resolve a 15 % slowdown
    assert any(line.startswith("w-int8_static: speedup") for line in lines)


def test_a_twenty_percent_slowdown_is_caught_and_an_unchanged_cell_passes(calibrated):
    path, _ = calibrated
    baseline = json.loads(path.read_text())["cells"]["int8_static"]
    for seed in range(10, 20):  # ten fresh A/A runs
        assert not [c for c in judge(noisy_record(seed=seed), baseline, speed_gated=True)
                    if c.failed]
        # 1.2x the latency: a sixth of the speedup lost, beyond the tolerance between hosts.
        slow = judge(noisy_record(seed=seed, slowdown=1.2), baseline, speed_gated=True)
        assert [c.metric for c in slow if c.failed] == ["speedup"]


def test_reblessing_keeps_the_calibration(calibrated):
    path, _ = calibrated
    before = json.loads(path.read_text())["cells"]["int8_static"]["calibration"]
    bless([noisy_record(seed=5)], REFS, "cpu-test", path.parents[1])
    after = json.loads(path.read_text())["cells"]["int8_static"]
    assert after["calibration"] == before
    assert after == baseline_entry(noisy_record(seed=5), before)


def test_calibration_refuses_too_few_runs_or_mixed_trees(tmp_path):
    paths = []
    for i, sha in enumerate(["abc", "abc", "def"]):
        paths.append(tmp_path / f"{i}.json")
        report.write_ledger(paths[-1], [noisy_record(seed=i)], {}, {**RUN, "git_sha": sha})
    with pytest.raises(SystemExit, match="at least 3 runs"):
        calibrate.calibrate(paths[:2], tmp_path)
    with pytest.raises(SystemExit, match="different trees"):
        calibrate.calibrate(paths, tmp_path)


def test_calibration_warns_when_accuracy_is_not_deterministic(tmp_path):
    root = tmp_path / "baselines"
    bless([make_record()], REFS, "cpu-test",
          root)
    paths = []
    for i, metric in enumerate([90.0, 90.0, 89.9]):
        paths.append(tmp_path / f"{i}.json")
        report.write_ledger(paths[-1], [make_record(comp_metric=metric)], {}, RUN)
    lines = calibrate.calibrate(paths, root)
    assert any(line.startswith("WARNING w-int8_static: accuracy_drop differs") for line in lines)


def test_a_run_without_a_speedup_leaves_the_cell_uncalibrated(tmp_path):
    root = tmp_path / "baselines"
    bless([noisy_record(seed=0)], REFS, "cpu-test", root)
    before = (root / "cpu-test" / "w.json").read_text()
    paths = []
    for seed in (1, 2, 3):
        paths.append(tmp_path / f"run-{seed}.json")
        report.write_ledger(paths[-1], [noisy_record(seed=seed)], {}, RUN)
    ledger = json.loads(paths[1].read_text())
    ledger["cells"][0]["speedup"] = None  # how a failed timing reads back from a ledger
    paths[1].write_text(json.dumps(ledger))
    lines = calibrate.calibrate(paths, root)
    assert "w-int8_static: speedup is not a number in 1 run(s), not calibrated" in lines
    assert (root / "cpu-test" / "w.json").read_text() == before
