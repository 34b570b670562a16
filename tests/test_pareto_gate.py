"""The Pareto front as a gate: a bless stores each workload's front, and a run that moves a front
point inward fails naming it, while one that pushes the front outward asks for a re-bless."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.harness import calibrate, compare, report
from benchmarks.harness.compare import LedgerCell
from benchmarks.harness.pareto import CELL_OBJECTIVES, Objective, dominates, front
from benchmarks.harness.record import Record
from benchmarks.harness.session import BenchRun
from benchmarks.harness.verdict import (
    BaselineError,
    BaselineFile,
    Check,
    bless,
    judge,
    judge_front,
    load_baseline,
    reference_entry,
)
from tests.test_verdict import make_record

REFS = {"w": {"reference": reference_entry("top1_pct", 91.0, True, "abc")}}
CLASS = "cpu-test"


# --- the math --------------------------------------------------------------------------------

HIGHER_XY = (Objective("x", True), Objective("y", True))


def test_the_front_is_the_points_no_other_point_beats_in_every_objective():
    points = {"a": {"x": 1.0, "y": 90.0}, "b": {"x": 4.0, "y": 89.0},
              "c": {"x": 2.0, "y": 88.0}, "d": {"x": 4.0, "y": 85.0}}
    assert front(points, HIGHER_XY) == ["a", "b"]
    assert dominates(points["b"], points["d"], HIGHER_XY)
    assert not dominates(points["a"], points["b"], HIGHER_XY)


def test_equal_points_both_stay_on_the_front_and_direction_is_respected():
    drop_and_size = CELL_OBJECTIVES[:2]
    twins = {"a": {"accuracy_drop": 1.0, "size_ratio": 4.0},
             "b": {"accuracy_drop": 1.0, "size_ratio": 4.0},
             "c": {"accuracy_drop": 2.0, "size_ratio": 4.0}}  # lost more: lower drop is better
    assert front(twins, drop_and_size) == ["a", "b"]


def test_a_value_that_is_not_a_number_is_refused_not_left_undominated():
    with pytest.raises(ValueError, match="point b: y is not a finite number"):
        front({"a": {"x": 1.0, "y": 1.0}, "b": {"x": 0.0, "y": math.nan}}, HIGHER_XY)


@given(values=st.lists(st.tuples(*[st.integers(-3, 3)] * 3), min_size=1, max_size=12),
       directions=st.tuples(*[st.booleans()] * 3))
def test_every_point_off_the_front_is_dominated_by_a_front_point_and_none_on_it_is(
        values, directions):
    objectives = [Objective(name, higher) for name, higher in zip("xyz", directions, strict=True)]
    points = {f"p{i}": dict(zip("xyz", map(float, v), strict=True))
              for i, v in enumerate(values)}
    on_front = front(points, objectives)
    assert on_front  # a finite set has a front
    for name in on_front:
        assert not any(dominates(other, points[name], objectives) for other in points.values())
    for name in set(points) - set(on_front):
        assert any(dominates(points[f], points[name], objectives) for f in on_front)


# --- bless stores the front ------------------------------------------------------------------

def blessed_records() -> list[Record]:
    """drop (pp), size ratio, speedup: int8_static 1.0, 4x, 2x; fp16 0.1, 2x, 1.25x; int4 3.0,
    8x, 2.5x; prune_l1@0.9 (simulated) 6.0, 10x; then two cells off the front: int8_dynamic
    1.5, 3.3x, 1.67x and prune_l1@0.5 (simulated) 0.1, 2x, measured 1.25x: fp16's place, but
    its speedup counts as the 1.0 it claims."""
    return [
        make_record("int8_static", comp_metric=90.0, comp_bytes=250, speed=(10.0, 5.0)),
        make_record("fp16", comp_metric=90.9, comp_bytes=500, speed=(10.0, 8.0)),
        make_record("int4", comp_metric=88.0, comp_bytes=125, speed=(10.0, 4.0)),
        make_record("prune_l1@0.9", comp_metric=85.0, comp_bytes=100, speed=(10.0, 10.0),
                    execution="simulated"),
        make_record("int8_dynamic", comp_metric=89.5, comp_bytes=300, speed=(10.0, 6.0)),
        make_record("prune_l1@0.5", comp_metric=90.9, comp_bytes=500, speed=(10.0, 8.0),
                    execution="simulated"),
    ]


def blessed(root: Path, hardware_class: str = CLASS) -> BaselineFile:
    bless(blessed_records(), REFS, hardware_class, root)
    return load_baseline("w", hardware_class, root)


def remeasured(**changes: dict) -> list[Record]:
    """The blessed cells measured again, with some changed: technique -> make_record's
    arguments (the blessed ones where not given)."""
    records = {r.technique: r for r in blessed_records()}
    for technique, kwargs in changes.items():
        old = records[technique]
        records[technique] = make_record(
            technique, **{"execution": old.execution, "comp_metric": old.compressed_metric,
                          "comp_bytes": old.compressed_size.size_bytes,
                          "speed": (old.timing.reference_ms[0], old.timing.compressed_ms[0]),
                          **kwargs})
    return list(records.values())


def judged(baseline: BaselineFile, records: list[Record], **kwargs) -> dict[str, list[Check]]:
    """The front's checks, by status."""
    by_status: dict[str, list[Check]] = {}
    for check in judge_front("w", records, baseline, speed_gated=True, **kwargs):
        by_status.setdefault(check.status, []).append(check)
    return by_status


def test_bless_stores_the_front_by_name_with_the_simulated_cells(tmp_path):
    lines = bless(blessed_records(), REFS, CLASS, tmp_path)
    data = json.loads((tmp_path / CLASS / "w.json").read_text())
    assert data["front"] == {"objectives": ["accuracy_drop", "size_ratio", "speedup"],
                             "points": ["fp16", "int4", "int8_static", "prune_l1@0.9"],
                             "simulated": ["prune_l1@0.5", "prune_l1@0.9"]}
    assert "w: blessed Pareto front fp16, int4, int8_static, prune_l1@0.9 (new)" in lines


def test_a_partial_bless_recomputes_the_front_over_every_cell_of_the_file(tmp_path):
    blessed(tmp_path)
    better = make_record("int8_dynamic", comp_metric=90.5, comp_bytes=200, speed=(10.0, 4.0))
    lines = bless([better], REFS, CLASS, tmp_path)
    front_now = load_baseline("w", CLASS, tmp_path).front
    assert front_now["points"] == ["fp16", "int4", "int8_dynamic", "prune_l1@0.9"]
    assert front_now["simulated"] == ["prune_l1@0.5", "prune_l1@0.9"]  # kept, not re-measured
    assert ("w: blessed Pareto front fp16, int4, int8_dynamic, prune_l1@0.9 (was fp16, int4, "
            "int8_static, prune_l1@0.9)") in lines


def test_a_partial_bless_of_a_file_without_a_front_reads_the_kept_cells_execution_from_the_registry(
        tmp_path):
    """The kept cells were not measured by this bless and no earlier front says which ran
    simulated: on a CPU class, the registry does (prune_l1 runs nowhere for real, fp16 for
    real on CUDA only; "int4" is no registered technique, so it counts as real)."""
    path = blessed(tmp_path).path
    data = json.loads(path.read_text())
    del data["front"]
    path.write_text(json.dumps(data))
    bless([make_record("int8_static", comp_metric=90.0, comp_bytes=250, speed=(10.0, 5.0))],
          REFS, CLASS, tmp_path)
    assert load_baseline("w", CLASS, tmp_path).front["simulated"] == [
        "fp16", "prune_l1@0.5", "prune_l1@0.9"]


def test_a_ledgers_cells_bless_the_same_front_as_the_run_that_measured_them(tmp_path):
    """`python -m benchmarks.harness.bless ledger.json` blesses LedgerCells, not Records."""
    from_ledger = [LedgerCell(r.to_json()) for r in blessed_records()]
    bless(from_ledger, REFS, CLASS, tmp_path / "ledger")
    assert (load_baseline("w", CLASS, tmp_path / "ledger").front
            == blessed(tmp_path / "run").front)


def test_calibrated_speedups_redraw_the_front_and_the_file_stays_readable(tmp_path):
    blessed(tmp_path / "baselines")
    run = {"hardware_class": CLASS, "cpu": "test", "torch": "x", "threads": 1,
           "git_sha": "abc", "tier": "pr"}
    ledgers = []
    for i, compressed_ms in enumerate((3.4, 3.3, 3.2)):  # int8_dynamic at about 3x, not 1.67x
        ledgers.append(tmp_path / f"run-{i}.json")
        report.write_ledger(ledgers[-1], remeasured(int8_dynamic={"speed": (10.0, compressed_ms)}),
                            {}, run)
    calibrate.calibrate(ledgers, tmp_path / "baselines")
    assert "int8_dynamic" in load_baseline("w", CLASS, tmp_path / "baselines").front["points"]


# --- fault injection: the judge ---------------------------------------------------------------

def test_the_blessed_cells_measured_again_hold_the_front(tmp_path):
    checks = judged(blessed(tmp_path), remeasured())
    assert set(checks) == {"pass"} and len(checks["pass"]) == 4


def test_a_front_point_moved_inward_fails_naming_the_point_the_objective_and_the_numbers(
        tmp_path):
    a_fifth_less = 313  # bytes: the size ratio 4.0 -> 3.19
    checks = judged(blessed(tmp_path), remeasured(int8_static={"comp_bytes": a_fifth_less}))
    [fail] = checks["fail"]
    assert fail.cell == "w-front" and fail.failed
    assert fail.message.startswith(
        "FRONT MOVED INWARD w-front: front point int8_static fell behind its blessed place in "
        "size_ratio and gained in nothing: w-int8_static: size_ratio measured 3.195, baseline "
        "4 ± 0.04 (higher is better)")
    assert "nox -s baselines -- -k w-int8_static" in fail.message


def test_a_front_point_moved_outward_is_reported_as_improved_to_re_bless(tmp_path):
    checks = judged(blessed(tmp_path), remeasured(int8_static={"comp_bytes": 200}))
    [improved] = checks["improved"]
    assert "fail" not in checks
    assert improved.message.startswith("front pushed outward: w-front: front point int8_static "
                                       "improved: w-int8_static: size_ratio measured 5")
    assert improved.message.endswith("re-bless with `nox -s baselines -- -k w-int8_static`")


def test_a_trade_along_the_front_is_reported_not_failed(tmp_path):
    """Larger but more accurate: neither place dominates the other."""
    checks = judged(blessed(tmp_path),
                    remeasured(int8_static={"comp_bytes": 313, "comp_metric": 90.9}))
    [trade] = checks["reported"]
    assert "fail" not in checks and "improved" not in checks
    assert "front point int8_static moved along the front, not inward" in trade.message
    assert "size_ratio measured 3.195" in trade.message
    assert "accuracy_drop measured 0.1" in trade.message


def test_a_cell_off_the_front_that_now_beats_a_front_point_is_an_improvement(tmp_path):
    checks = judged(blessed(tmp_path),
                    remeasured(int8_dynamic={"comp_metric": 90.5, "comp_bytes": 200,
                                             "speed": (10.0, 4.0)}))
    [improved] = checks["improved"]
    assert improved.message.startswith(
        "front pushed outward: w-front: int8_dynamic now beats front point int8_static's "
        "blessed place, worse in nothing")
    assert "nox -s baselines -- -k w-int8_dynamic" in improved.message


def test_a_simulated_cell_claims_no_speedup_so_its_timing_noise_moves_nothing(tmp_path):
    faster = {"speed": (10.0, 7.0)}  # 1.43x measured, of no faster kernel
    checks = judged(blessed(tmp_path), remeasured(**{"prune_l1@0.9": faster,
                                                     "prune_l1@0.5": faster}))
    assert set(checks) == {"pass"}


def test_a_front_point_that_lost_its_real_kernel_falls_behind_though_its_cell_only_reports_it(
        tmp_path):
    """int8_static now runs simulated (no int8 kernel): its cell reports the speedup, never
    gates it, but on the front its 2x is gone."""
    baseline = blessed(tmp_path)
    [now] = [r for r in remeasured(int8_static={"execution": "simulated", "speed": (10.0, 10.0)})
             if r.technique == "int8_static"]
    assert not [c for c in judge(now, baseline.cell("int8_static"), speed_gated=True)
                if c.failed]
    [fail] = judged(baseline, [now])["fail"]
    assert "front point int8_static fell behind its blessed place in speedup" in fail.message
    assert "w-int8_static: speedup measured 1, baseline 2 ± 0.5" in fail.message


def test_a_front_point_this_run_did_not_measure_is_reported_not_judged_and_not_passed(
        tmp_path):
    pr_tier = [r for r in remeasured() if r.technique not in ("int4", "prune_l1@0.9")]
    checks = judged(blessed(tmp_path), pr_tier)
    [unmeasured] = checks["reported"]
    assert unmeasured.message == ("w-front: front points int4, prune_l1@0.9 not measured in "
                                  "this run (not in this tier/selection): not judged")
    assert not any("int4" in c.message for c in checks["pass"])


def test_on_another_class_speedup_is_not_judged_and_an_old_lead_is_not_news(tmp_path):
    """Blessed on a class whose speedups this machine cannot gate: the front is judged on
    drop and size only. int8_dynamic led int8_static in both when blessed, behind it only in
    speed: that is no improvement now."""
    records = [
        make_record("int8_static", comp_metric=90.0, comp_bytes=250, speed=(9.0, 3.0)),
        make_record("int4", comp_metric=90.6, comp_bytes=167, speed=(10.0, 5.0)),
        make_record("int8_dynamic", comp_metric=90.5, comp_bytes=200, speed=(10.0, 10.0)),
    ]
    bless(records, REFS, CLASS, tmp_path)
    baseline = load_baseline("w", CLASS, tmp_path)
    assert baseline.front["points"] == ["int4", "int8_static"]
    slower = [*records[1:], make_record("int8_static", comp_metric=90.0, comp_bytes=250,
                                        speed=(9.0, 9.0))]
    [fail] = judged(baseline, slower)["fail"]  # with speed gated, int8_static lost its 3x
    assert "front point int8_static fell behind its blessed place in speedup" in fail.message
    ungated = judge_front("w", slower, baseline, speed_gated=False,
                          speed_note="baseline is from cpu-test")
    assert {c.status for c in ungated} == {"pass"}
    assert "speedup not gated: baseline is from cpu-test" in ungated[0].message


def test_compare_judges_a_ledger_s_front_as_the_bench_run_does(tmp_path):
    blessed(tmp_path / "baselines")
    ledger = tmp_path / "ledger.json"
    report.write_ledger(ledger, remeasured(int8_static={"comp_bytes": 313}), {},
                        {"hardware_class": CLASS})
    checks = compare.compare(ledger, tmp_path / "baselines")
    [front_failure] = [c for c in checks if c.failed and c.cell == "w-front"]
    assert "front point int8_static fell behind its blessed place in size_ratio" in \
        front_failure.message


# --- files without a front, and malformed ones ------------------------------------------------

def test_a_baseline_without_a_front_has_no_front_gate_and_says_so_once(tmp_path):
    path = blessed(tmp_path).path
    data = json.loads(path.read_text())
    del data["front"]
    path.write_text(json.dumps(data))
    baseline = load_baseline("w", CLASS, tmp_path)
    inward = remeasured(int8_static={"comp_bytes": 313})
    [check] = judge_front("w", inward, baseline, speed_gated=True)
    assert check.status == "reported" and not check.failed
    assert "no blessed front" in check.message and "nox -s baselines" in check.message
    other = Check("v-front", "no_front", "reported", math.nan, "v: no blessed front")
    assert report.front_notes([check, other]) == [
        "No blessed Pareto front for w, v, so no front gate there: bless to store one "
        "(`nox -s baselines`)"]


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda f: f.update(points=["int8_static", "int3"]),
     r"front\.points is \[\"int8_static\", \"int3\"\], not a list of this file's cells"),
    (lambda f: f.update(objectives=["accuracy_drop", "latency_ms"]),
     r"front\.objectives is .*, not a list of distinct objectives among accuracy_drop, "
     r"size_ratio, speedup"),
    (lambda f: f.pop("simulated"), r"front\.simulated is missing"),
    (lambda f: f.update(points=["int4", "int8_static"]),
     r"front\.points is .*, but the front of the cells' values is \[\"fp16\", \"int4\", "
     r"\"int8_static\", \"prune_l1@0\.9\"\] \(a value edited by hand\?\): write that"),
])
def test_a_malformed_front_is_refused_saying_what_is_wrong_and_what_to_do(tmp_path, edit,
                                                                          problem):
    path = blessed(tmp_path).path
    data = json.loads(path.read_text())
    edit(data["front"])
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=problem) as refused:
        load_baseline("w", CLASS, tmp_path)
    assert "re-bless it (`nox -s baselines`)" in str(refused.value)


def test_a_value_edited_by_hand_off_the_front_leaves_the_file_unreadable_until_fixed(tmp_path):
    path = blessed(tmp_path).path
    data = json.loads(path.read_text())
    data["cells"]["int8_dynamic"]["size_ratio"]["value"] = 9.0  # now on the front
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"front\.points .*int8_dynamic"):
        load_baseline("w", CLASS, tmp_path)


# --- the run: a workload-level verdict after the cells, and the exit status -------------------

def bench_run(tmp_path: Path, *, update: bool = False) -> BenchRun:
    return BenchRun("cpu", 1, "pr", update, tmp_path / "reports", tmp_path / "baselines")


def test_a_front_moved_inward_fails_the_run_after_its_tests(tmp_path):
    run = bench_run(tmp_path)
    blessed(run.baselines_root, run.hardware_class)
    run.records = remeasured(int8_static={"comp_bytes": 313})
    lines = run.finish()
    assert any(line.startswith("FRONT MOVED INWARD w-front: front point int8_static")
               for line in lines)
    assert run.exit_status(pytest.ExitCode.OK) == pytest.ExitCode.TESTS_FAILED
    assert run.exit_status(pytest.ExitCode.INTERRUPTED) == pytest.ExitCode.INTERRUPTED
    ledger = json.loads((run.report_dir / "ledger.json").read_text())
    assert [c["status"] for c in ledger["workload_checks"] if c["cell"] == "w-front"] == \
        ["pass", "pass", "fail", "pass"]


def test_a_run_that_holds_its_front_exits_as_its_tests_did(tmp_path):
    run = bench_run(tmp_path)
    blessed(run.baselines_root, run.hardware_class)
    run.records = remeasured()
    run.finish()
    assert not run.front_failures
    assert run.exit_status(pytest.ExitCode.OK) == pytest.ExitCode.OK
    assert run.exit_status(pytest.ExitCode.TESTS_FAILED) == pytest.ExitCode.TESTS_FAILED


def test_a_bless_judges_no_front(tmp_path):
    run = bench_run(tmp_path, update=True)
    run.workload_entries = REFS
    run.records = remeasured(int8_static={"comp_bytes": 313})
    run.finish()
    assert "w-front" not in run.checks and not run.front_failures
    assert load_baseline("w", run.hardware_class, run.baselines_root).front is not None


def test_a_sharded_run_judges_the_front_in_the_controller_over_every_workers_cells(tmp_path):
    """Each worker holds part of the cells and judges no front; the controller, with every
    shard merged, judges each point, here one that a worker measured moved inward."""
    first, second = bench_run(tmp_path), bench_run(tmp_path)
    records = remeasured(int4={"comp_bytes": 200})  # size ratio 8 -> 5
    first.records, second.records = records[:3], records[3:]
    shards = [tmp_path / "shards" / "gw0.pkl", tmp_path / "shards" / "gw1.pkl"]
    for worker, shard in zip((first, second), shards, strict=True):
        worker.save_shard(shard)
        assert not any(cell.endswith("-front") for cell in worker.checks)
    controller = bench_run(tmp_path)
    blessed(controller.baselines_root, controller.hardware_class)
    controller.add_shards(shards)
    checks = controller.judge_fronts()
    assert not [c for c in checks if c.metric == "front_unmeasured"]
    assert [c.message.split(" fell")[0] for c in controller.front_failures] == [
        "FRONT MOVED INWARD w-front: front point int4"]
