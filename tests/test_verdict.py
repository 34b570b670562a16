"""The verdict logic: gates, missing baselines, NaN, simulated speedups, blessing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.harness import provenance
from benchmarks.harness.measure import Size, Timing
from benchmarks.harness.record import Record
from benchmarks.harness.verdict import (
    Gate,
    bless,
    gates_for,
    judge,
    judge_reference,
    load_baseline,
    reference_entry,
)
from benchmarks.workloads.base import KLD, TOP1, Metric


def make_record(technique="int8_static", *, comp_metric=90.0, comp_bytes=250,
                speed=(10.0, 5.0), execution="real") -> Record:
    ref_size = Size(1000, 900, 880, 250, 250, 1000)
    comp_size = Size(comp_bytes, comp_bytes, comp_bytes, 250, 250, comp_bytes)
    rounds = 9
    return Record(
        workload="w", technique=technique, family="quantization", execution=execution,
        metric=TOP1, reference_metric=91.0,
        compressed_metric=comp_metric, reference_size=ref_size, compressed_size=comp_size,
        timing=Timing([speed[0]] * rounds, [speed[1]] * rounds, 1),
        reference_peak_memory_bytes=4000, compressed_peak_memory_bytes=2000,
        provenance={"hardware_class": "cpu-test", "stack_lock": "lock-a"},
        why_simulated="masks" if execution == "simulated" else "",
    )


def baseline_of(record: Record) -> dict:
    return {k: g.__dict__ for k, g in gates_for(record).items()}


def statuses(checks):
    return {c.metric: c.status for c in checks}


def test_gate_directions():
    lower = Gate(1.0, 0.3, higher_is_better=False)
    assert lower.regressed(1.31) and not lower.regressed(1.3)
    assert lower.improved(0.69) and not lower.improved(0.7)
    higher = Gate(4.0, 0.04, higher_is_better=True)
    assert higher.regressed(3.95) and not higher.regressed(3.97)
    assert higher.improved(4.05)


def test_same_measurement_passes():
    record = make_record()
    checks = judge(record, baseline_of(record), speed_gated=True)
    assert statuses(checks) == {"accuracy_drop": "pass", "size_ratio": "pass", "speedup": "pass"}


def test_accuracy_regression_names_cell_metric_baseline_tolerance_and_value():
    base = baseline_of(make_record(comp_metric=90.0))
    checks = judge(make_record(comp_metric=88.0), base, speed_gated=True)
    [fail] = [c for c in checks if c.failed]
    assert fail.metric == "accuracy_drop"
    assert fail.message == ("REGRESSED w-int8_static: accuracy_drop measured 3, baseline 1 "
                            "± 0.3 (lower is better)")


def test_size_growth_of_five_percent_fails():
    base = baseline_of(make_record(comp_bytes=250))
    checks = judge(make_record(comp_bytes=263), base, speed_gated=True)
    assert statuses(checks)["size_ratio"] == "fail"


def test_slowdown_fails_only_where_speed_is_gated():
    base = baseline_of(make_record(speed=(10.0, 5.0)))
    slow = make_record(speed=(10.0, 9.0))
    assert statuses(judge(slow, base, speed_gated=True))["speedup"] == "fail"
    other_class = judge(slow, base, speed_gated=False, speed_note="baseline from cpu-other")
    assert statuses(other_class)["speedup"] == "reported"
    assert "cpu-other" in [c for c in other_class if c.metric == "speedup"][0].message


def test_simulated_technique_speedup_is_reported_not_gated():
    record = make_record("prune_l1@0.5", speed=(10.0, 10.0), execution="simulated")
    base = baseline_of(record)
    base["speedup"]["value"] = 5.0  # even a stored claim of a speedup is not enforced
    checks = judge(record, base, speed_gated=True)
    speed = [c for c in checks if c.metric == "speedup"][0]
    assert speed.status == "reported" and "simulated" in speed.message


def test_clearly_better_is_reported_as_improved():
    base = baseline_of(make_record(comp_metric=89.0))
    checks = judge(make_record(comp_metric=90.5), base, speed_gated=True)
    improved = [c for c in checks if c.status == "improved"]
    assert [c.metric for c in improved] == ["accuracy_drop"]
    assert improved[0].message.startswith("improved, re-bless")


def with_kld(record: Record, per_sample: list[float]) -> Record:
    record.fidelity = (KLD,)
    record.fidelity_per_sample = {"kld": torch.tensor(per_sample, dtype=torch.float64)}
    return record


def test_a_metric_declares_its_own_tolerance_and_direction():
    """A workload's own metrics, declared once: the gates take their tolerances from them."""
    score = Metric("my_score", "", higher_is_better=False, tolerance=0.7)
    flips = Metric("flips_pct", "%", higher_is_better=False, tolerance=0.5, relative_tolerance=0.2)

    def measured(flipped: float) -> Record:
        record = make_record(comp_metric=93.0)  # lower is better: 2 worse than 91
        record.metric, record.fidelity = score, (flips,)
        record.fidelity_per_sample = {"flips_pct": torch.full((32,), flipped)}
        return record

    record = measured(5.0)
    base = baseline_of(record)
    assert base["accuracy_drop"] == {"value": 2.0, "tolerance": 0.7, "higher_is_better": False}
    assert base["flips_pct"] == {"value": 5.0, "tolerance": 1.0, "higher_is_better": False}
    assert record.to_json()["declared_gates"] == {
        "accuracy_drop": {"tolerance": 0.7, "higher_is_better": False},
        "flips_pct": {"tolerance": 1.0, "higher_is_better": False}}
    assert statuses(judge(measured(5.9), base, speed_gated=True))["flips_pct"] == "pass"
    assert statuses(judge(measured(7.0), base, speed_gated=True))["flips_pct"] == "fail"


def test_the_divergence_from_the_reference_is_gated_with_its_own_tolerance():
    base = baseline_of(with_kld(make_record(), [0.010, 0.012, 0.011, 0.009] * 8))
    assert base["kld"] == {"value": 0.0105, "tolerance": 0.00105, "higher_is_better": False}
    same = judge(with_kld(make_record(), [0.010, 0.012, 0.011, 0.009] * 8), base,
                 speed_gated=True)
    assert statuses(same)["kld"] == "pass"
    # The same perplexity, predictions further from the reference's: the metric hides it.
    moved = judge(with_kld(make_record(), [0.020, 0.022, 0.021, 0.019] * 8), base,
                  speed_gated=True)
    [fail] = [c for c in moved if c.failed]
    assert fail.metric == "kld" and fail.message.startswith("REGRESSED w-int8_static: kld")


def test_a_baseline_blessed_before_the_divergence_was_gated_reports_it_until_re_blessed():
    base = baseline_of(make_record())  # no kld in it
    checks = judge(with_kld(make_record(), [0.5] * 32), base, speed_gated=True)
    [kld] = [c for c in checks if c.metric == "kld"]
    assert kld.status == "reported" and "re-bless the cell on this class" in kld.message
    assert not [c for c in checks if c.failed]


def test_missing_baseline_fails_with_how_to_fix():
    [check] = judge(make_record(), None, speed_gated=True)
    assert check.failed and "nox -s baselines" in check.message


def test_nan_measurement_fails():
    record = make_record(comp_metric=math.nan)
    checks = judge(record, baseline_of(make_record()), speed_gated=True)
    assert statuses(checks)["accuracy_drop"] == "fail"


def test_zero_timing_rounds_is_an_error():
    with pytest.raises(ValueError, match="non-zero number of rounds"):
        Timing([], [], 1)


def test_bless_keeps_cells_it_did_not_measure(tmp_path):
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    bless([make_record("int8_static"), make_record("fp16")], refs, "cpu-test", tmp_path)
    lines = bless([make_record("int8_static", comp_metric=89.0)], refs, "cpu-test", tmp_path)
    data = json.loads((tmp_path / "cpu-test" / "w.json").read_text())
    assert set(data["cells"]) == {"int8_static", "fp16"}
    assert data["cells"]["int8_static"]["accuracy_drop"]["value"] == 2.0
    assert any("w-int8_static: accuracy_drop 1.0 -> 2.0" in line for line in lines)


def test_a_cell_blessed_on_one_class_awaits_its_bless_on_the_others(tmp_path):
    """Blessing a new cell on one class notes it in the other locked classes' files; their
    bench fails it with the way out, and their own bless of it clears the note."""
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    bless([make_record("int8_static")], refs, "cpu-a", tmp_path)
    bless([make_record("int8_static")], refs, "cpu-b", tmp_path)
    lines = bless([make_record("int8_static"), make_record("fp16")], refs, "cpu-a", tmp_path)
    other = tmp_path / "cpu-b" / "w.json"
    assert f"{other}: awaiting a bless on its class: fp16" in lines
    found = load_baseline("w", "cpu-b", tmp_path)
    assert found.awaiting("fp16").startswith("blessed on cpu-a")
    [check] = judge(make_record("fp16"), found.cell("fp16"), speed_gated=True,
                    awaiting=found.awaiting("fp16"))
    assert check.status == "fail"
    assert "no baseline on this class yet (blessed on cpu-a" in check.message
    assert "nox -s baselines -- -k w-fp16" in check.message

    bless([make_record("fp16")], refs, "cpu-b", tmp_path)
    data = json.loads(other.read_text())
    assert "awaiting_bless" not in data and set(data["cells"]) == {"int8_static", "fp16"}


def test_a_class_blessed_before_the_lock_is_not_asked_to_await(tmp_path):
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    old = make_record("int8_static")
    old.provenance = {**old.provenance, "stack_lock": "none"}
    bless([old], refs, "cpu-old", tmp_path)
    bless([make_record("fp16")], refs, "cpu-a", tmp_path)
    assert "awaiting_bless" not in json.loads((tmp_path / "cpu-old" / "w.json").read_text())


def test_blessing_only_cells_that_skip_records_why(tmp_path):
    """`nox -s baselines -- -k <cell>` on a cell that cannot run here: its reason goes into
    the file, and a baseline it had goes out, the other cells untouched."""
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    bless([make_record("int8_static"), make_record("fp16")], refs, "cpu-test", tmp_path)
    lines = bless([], {"w": {"skipped": {"fp16": "no fp16 here"}}}, "cpu-test", tmp_path)
    data = json.loads((tmp_path / "cpu-test" / "w.json").read_text())
    assert set(data["cells"]) == {"int8_static"} and data["skipped"] == {"fp16": "no fp16 here"}
    assert "w-fp16: cannot run here any more, its baseline was dropped (no fp16 here)" in lines
    bless([make_record("int8_static")], refs, "cpu-other", tmp_path)
    bless([], {"w": {"skipped": {"int4": "no int4 kernel"}}}, "cpu-test", tmp_path)
    awaiting = json.loads((tmp_path / "cpu-other" / "w.json").read_text())["awaiting_bless"]
    assert awaiting == {"int4": "skipped on cpu-test, not yet tried on this class"}
    assert bless([], {"v": {"skipped": {"fp16": "no"}}}, "cpu-test", tmp_path)[0].endswith(
        "not written: no cell of v was measured, and a baseline file starts from a measured "
        "one (skipped here: fp16)")


def test_baseline_falls_back_to_another_class_and_says_so(tmp_path):
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    bless([make_record()], refs, "cpu-x86_64-avx2", tmp_path)
    found = load_baseline("w", "cpu-x86_64-avx512", tmp_path)
    assert found is not None and found.hardware_class == "cpu-x86_64-avx2"
    assert load_baseline("nothing", "cpu-x86_64-avx512", tmp_path) is None


def test_the_fallback_is_the_nearest_class(tmp_path):
    """An AMX CPU is judged against AVX512-VNNI's baselines before AVX2's, whatever the
    folders' alphabetical order; another machine or device comes last."""
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    for hardware_class in ("cpu-x86_64-avx2", "cpu-x86_64-avx512vnni", "cuda-sm90"):
        bless([make_record()], refs, hardware_class, tmp_path)
    assert load_baseline("w", "cpu-x86_64-amx", tmp_path).hardware_class \
        == "cpu-x86_64-avx512vnni"
    assert load_baseline("w", "cpu-x86_64-avx2vnni", tmp_path).hardware_class \
        == "cpu-x86_64-avx2"
    assert load_baseline("w", "cuda-sm80", tmp_path).hardware_class == "cuda-sm90"


def test_corrupt_baseline_is_a_clear_error(tmp_path):
    (tmp_path / "cpu-test").mkdir()
    (tmp_path / "cpu-test" / "w.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_baseline("w", "cpu-test", tmp_path)


def test_reference_gate(tmp_path):
    refs = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
    bless([make_record()], refs, "cpu-test", tmp_path)
    baseline = load_baseline("w", "cpu-test", tmp_path)
    assert judge_reference("w", "top1_pct", 90.5, baseline).status == "pass"
    assert judge_reference("w", "top1_pct", 89.0, baseline).failed
    assert judge_reference("w", "top1_pct", 90.5, None).failed
    same = judge_reference("w", "top1_pct", 91.0, baseline, checkpoint="abc")
    other = judge_reference("w", "top1_pct", 91.0, baseline, checkpoint="def")
    assert "NOTE" not in same.message
    assert other.status == "pass" and "checkpoint def is not the blessed abc" in other.message


# --- verdicts with intervals: detection power and the A/A case ----------------------------------


def sampled_record(technique="int8_static", *, lost=30, speed=(10.0, 5.0),
                   comp_bytes=250) -> Record:
    """A record whose accuracy comes from 10,000 paired test outcomes (90 % reference)."""
    gen = torch.Generator().manual_seed(0)
    ref = 100.0 * (torch.rand(10_000, generator=gen) < 0.9).float()
    comp = ref.clone()
    comp[(ref > 0).nonzero().flatten()[:lost]] = 0.0
    record = make_record(technique, comp_metric=comp.mean().item(), comp_bytes=comp_bytes,
                         speed=speed)
    record.reference_metric = ref.mean().item()
    record.per_sample = {"reference": ref, "compressed": comp}
    return record


def test_a_half_point_accuracy_regression_is_caught_and_an_unchanged_cell_passes():
    baseline = baseline_of(sampled_record(lost=30))  # blessed drop: 0.3 pp
    assert not [c for c in judge(sampled_record(lost=30), baseline, speed_gated=True)
                if c.status != "pass"]
    checks = judge(sampled_record(lost=80), baseline, speed_gated=True)  # +0.5 pp
    assert statuses(checks)["accuracy_drop"] == "fail"
    assert "95% CI" in [c for c in checks if c.failed][0].message


def test_a_five_percent_size_growth_is_caught():
    baseline = baseline_of(sampled_record())
    checks = judge(sampled_record(comp_bytes=round(250 * 1.05)), baseline, speed_gated=True)
    assert statuses(checks)["size_ratio"] == "fail"


def test_a_change_the_test_set_cannot_resolve_is_reported_not_failed():
    """On 10 samples a 10 pp drop is one answer: beyond the tolerance, within the noise."""
    ref = torch.tensor([100.0] * 9 + [0.0])
    comp = ref.clone()
    comp[0] = 0.0
    record = make_record(comp_metric=comp.mean().item())
    record.reference_metric = ref.mean().item()
    record.per_sample = {"reference": ref, "compressed": comp}
    baseline = baseline_of(make_record(comp_metric=91.0))  # blessed drop: 0
    check = next(c for c in judge(record, baseline, speed_gated=True)
                 if c.metric == "accuracy_drop")
    assert check.status == "undetectable" and not check.failed
    assert "below detectable" in check.message


@pytest.mark.parametrize(("flags", "expected"), [
    (("avx2",), "avx2"),
    (("avx2", "avx_vnni"), "avx2vnni"),
    (("avx2", "avx512f"), "avx512"),
    (("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), "avx512vnni"),
    (("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16"), "amx"),
    ((), "generic"),
])
def test_hardware_class_from_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(provenance, "cpu_flags", lambda: flags)
    monkeypatch.setattr(provenance.platform, "machine", lambda: "x86_64")
    assert provenance.hardware_class("cpu") == f"cpu-x86_64-{expected}"
