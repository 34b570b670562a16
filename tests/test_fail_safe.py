"""Bad baselines and a corrupt reference cache fail safe: a clear error that names the file,
never a silent pass, never a bare traceback."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks.harness import calibrate, compare, matrix, report
from benchmarks.harness.session import BenchRun
from benchmarks.harness.verdict import (
    BASELINES,
    BaselineError,
    baseline_entry,
    judge,
    load_baseline,
    read_baseline,
    reference_entry,
)
from benchmarks.workloads import cache as refs
from tests.test_verdict import make_record

HARDWARE = "cpu-test"
RUN = {"hardware_class": HARDWARE, "cpu": "test", "torch": "x", "threads": 1, "git_sha": "abc",
       "tier": "pr"}


def baseline_data() -> dict:
    """A well-formed baseline of workload "w", as `nox -s baselines` writes one."""
    return {
        "schema": 1,
        "workload": "w",
        "hardware_class": HARDWARE,
        "reference": reference_entry("top1_pct", 91.0, True, "abc"),
        "provenance": {"hardware_class": HARDWARE},
        "cells": {"int8_static": baseline_entry(make_record())},
    }


def write_baseline(root: Path, data: dict, hardware: str = HARDWARE) -> Path:
    path = root / hardware / "w.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))  # NaN and Infinity written as JSON allows
    return path


def broken(field: str, value) -> dict:
    """The well-formed baseline with the field at dotted path `field` set to `value`."""
    data = baseline_data()
    *parents, key = field.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[key] = value
    return data


# --- baseline files ------------------------------------------------------------------------


FAULTS = {
    "nan value": ("cells.int8_static.accuracy_drop.value", math.nan, "is NaN, not a finite"),
    "infinite value": ("cells.int8_static.speedup.value", math.inf, "is Infinity, not a finite"),
    "negative tolerance": ("cells.int8_static.size_ratio.tolerance", -5, "is -5, not a finite "
                           "number >= 0"),
    "string value": ("cells.int8_static.size_ratio.value", "4.0", 'is "4.0", not a finite'),
    "non-bool direction": ("cells.int8_static.speedup.higher_is_better", "true",
                           'is "true", not true or false'),
    "0/1 direction": ("cells.int8_static.accuracy_drop.higher_is_better", 0, "is 0, not true"),
    "reference nan": ("reference.value", math.nan, "is NaN, not a finite"),
    "reference negative tolerance": ("reference.tolerance", -1.0, "is -1.0, not a finite"),
    "wrong workload": ("workload", "other", 'is "other", but the file is w\'s'),
    "calibration nan": ("cells.int8_static.calibration", {"runs": 3, "rel_sd": math.nan},
                        "is NaN, not a finite number >= 0"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_malformed_baseline_names_the_file_the_field_and_the_fix(tmp_path, fault):
    """Guards: a NaN, infinite or non-numeric gate, a negative tolerance, a non-bool direction
    or a file of another workload is refused when read, with where it is and how to fix it."""
    field, value, problem = FAULTS[fault]
    path = write_baseline(tmp_path, broken(field, value))
    with pytest.raises(BaselineError) as caught:
        load_baseline("w", HARDWARE, tmp_path)
    message = str(caught.value)
    where = field if fault != "calibration nan" else f"{field}.rel_sd"
    assert f"baseline {path}: {where} {problem}" in message
    assert f"`git checkout -- {path}`" in message and "`nox -s baselines`" in message


def test_an_unknown_gate_name_or_gate_field_is_refused(tmp_path):
    """Guards: a misspelt gate would never be judged (its metric would be "missing")."""
    data = baseline_data()
    data["cells"]["int8_static"]["acuracy_drop"] = data["cells"]["int8_static"]["size_ratio"]
    path = write_baseline(tmp_path, data)
    with pytest.raises(BaselineError, match=r"cells\.int8_static\.acuracy_drop is no gated "):
        read_baseline(path)
    data = baseline_data()  # a fidelity metric the reference entry does not name
    data["cells"]["int8_static"]["flips_pct"] = data["cells"]["int8_static"]["size_ratio"]
    with pytest.raises(BaselineError, match=r"cells\.int8_static\.flips_pct is no gated "
                                            r"metric \(those are accuracy_drop, size_ratio, "
                                            r"speedup, kld "):
        read_baseline(write_baseline(tmp_path, data))
    data["reference"]["fidelity"] = ["flips_pct"]  # named: read
    assert read_baseline(write_baseline(tmp_path, data))["cells"]["int8_static"]["flips_pct"]
    data = baseline_data()
    data["cells"]["int8_static"]["speedup"]["tol"] = 0.1
    with pytest.raises(BaselineError, match=r"cells\.int8_static\.speedup\.tol is no field"):
        read_baseline(write_baseline(tmp_path, data))
    data = baseline_data()
    del data["cells"]["int8_static"]["speedup"]["tolerance"]
    with pytest.raises(BaselineError, match=r"cells\.int8_static\.speedup\.tolerance is missing"):
        read_baseline(write_baseline(tmp_path, data))


def test_keys_the_harness_does_not_read_and_probe_gates_are_accepted(tmp_path):
    """Guards the other way: new optional blocks (an evaluation, a reference floor) and a
    probe's `<probe>_speedup` gate are not mistaken for damage."""
    data = baseline_data()
    data["evaluation"] = {"definition": "d", "samples": 10, "fingerprint": "f"}
    data["reference"].update(floor=10.0, floor_is="chance")
    data["cells"]["int8_static"]["decode_speedup"] = {"value": 1.5, "tolerance": 0.4,
                                                      "higher_is_better": True}
    data["cells"]["int8_static"]["calibration"] = {"runs": 3, "rel_sd": 0.02, "git_sha": "abc",
                                                   "speedups": [1.9, 2.0, 2.1]}
    assert read_baseline(write_baseline(tmp_path, data)) == data


def test_invalid_json_and_an_old_schema_raise_the_same_error(tmp_path):
    """Guards: every unusable baseline is one exception type, so callers handle it once."""
    path = write_baseline(tmp_path, broken("schema", 0))
    with pytest.raises(BaselineError, match=r"schema is 0, expected 1"):
        read_baseline(path)
    path.write_text('{"schema": 1, "cells": {')
    with pytest.raises(BaselineError, match=f"baseline {path}: the file is not valid JSON"):
        read_baseline(path)


@pytest.mark.parametrize("path", sorted(BASELINES.glob("*/*.json")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_stored_baseline_is_valid(path):
    """Guards: validation never refuses a baseline the repository ships."""
    assert read_baseline(path)["cells"]


# --- in a bench run, and in the command-line tools -----------------------------------------


def nan_bench(tmp_path) -> tuple[BenchRun, Path]:
    run = BenchRun(device="cpu", threads=1, tier="pr", update_baselines=False,
                   report_dir=tmp_path / "reports", baselines_root=tmp_path / "baselines")
    path = write_baseline(run.baselines_root,
                          broken("cells.int8_static.accuracy_drop.value", math.nan),
                          run.hardware_class)
    return run, path


def test_a_nan_baseline_fails_its_cell_in_a_bench_run_instead_of_passing(tmp_path):
    """Guards the fault that was found: NaN compares false, so a NaN gate never regressed and
    the cell passed. In a bench run the cell now fails with the file and field."""
    record = make_record(comp_metric=50.0)  # lost 41 points
    nan_gate = broken("cells.int8_static.accuracy_drop.value", math.nan)["cells"]["int8_static"]
    assert not any(c.failed for c in judge(record, nan_gate, speed_gated=True))  # the hazard
    run, path = nan_bench(tmp_path)

    def measure(workload, technique):  # stands in for measuring the cell
        run.records.append(record)
        return record, SimpleNamespace(model=nn.Identity(), input_dtype=torch.float32)

    run.run = measure
    run.workloads["w"] = SimpleNamespace(example_input=torch.zeros(1, 2))
    benchmark = SimpleNamespace(extra_info={}, pedantic=lambda fn, rounds, warmup_rounds: fn())
    with pytest.raises(pytest.fail.Exception) as caught:
        matrix.check_cell(run, benchmark, "w", "int8_static")
    assert not caught.value.pytrace  # a clean failure, not a traceback
    assert (f"w-int8_static: baseline {path}: cells.int8_static.accuracy_drop.value is NaN"
            in caught.value.msg)
    assert run.checks["w-int8_static"][0].failed  # and the report says FAIL, not "not judged"
    assert "w" in run.run_info()["speedups_not_gated"]  # the end-of-run report does not crash


def test_a_malformed_baseline_fails_the_reference_check_cleanly(tmp_path):
    """Guards: the reference test of a workload with a malformed baseline fails with its
    message (and no traceback)."""
    run, path = nan_bench(tmp_path)
    run.workload = lambda name: (SimpleNamespace(metric="top1_pct", checkpoint_sha256="abc"),
                                 SimpleNamespace(score=SimpleNamespace(value=91.0)))
    with pytest.raises(pytest.fail.Exception) as caught:
        matrix.check_reference(run, "w")
    assert not caught.value.pytrace
    assert f"w-reference: baseline {path}: cells.int8_static" in caught.value.msg


def test_compare_and_calibrate_print_the_error_and_exit_non_zero(tmp_path):
    """Guards: the tools that read baselines outside pytest say what is wrong, not crash."""
    path = write_baseline(tmp_path, broken("cells.int8_static.speedup.tolerance", -5))
    ledgers = []
    for i in range(3):
        ledgers.append(tmp_path / f"ledger{i}.json")
        report.write_ledger(ledgers[-1], [make_record()], {}, RUN)
    expected = f"baseline {path}: cells.int8_static.speedup.tolerance is -5"
    with pytest.raises(SystemExit, match=f"^compare: {expected}"):
        compare.main([str(ledgers[0]), "--baselines", str(tmp_path)])
    with pytest.raises(SystemExit, match=f"^calibrate: {expected}"):
        calibrate.main([*map(str, ledgers), "--baselines", str(tmp_path)])


# --- the reference-model cache -------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The cache in tmp_path, trained by a stand-in for the capped child that does what the
    real child does (`_train_and_save`); `trained` counts its trainings."""
    monkeypatch.setenv("COMPRESS_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(refs.platform, "machine", lambda: "x86_64")
    trained = []

    def child(argv, env, cwd):
        trained.append(env[refs._TRAINING])
        refs._train_and_save("w", Recipe(), lambda: nn.Linear(2, 2), Path(env[refs._TRAINING]))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(refs.subprocess, "run", child)

    def load():
        return refs.cached_state_dict("w", Recipe(), build=lambda: pytest.fail("in-process"))

    return SimpleNamespace(load=load, trained=trained)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def replace_weights(path: Path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), path)  # other weights, still a valid checkpoint


@pytest.mark.parametrize(("fault", "keep_sidecar", "why"), [
    (truncate, True, "its sha256 is"),
    (truncate, False, "torch.load fails: RuntimeError"),  # cached before the sidecars
    (replace_weights, True, "its sha256 is"),
], ids=["truncated", "truncated-without-sidecar", "changed-but-loads"])
def test_a_corrupt_cache_entry_is_moved_aside_said_and_retrained(cache, capsys, fault,
                                                                 keep_sidecar, why):
    """Guards: a damaged cached reference never fails every later run with torch's bare zip
    error, nor is silently used: it is kept as <file>.corrupt, named on stderr, and retrained."""
    state, path = cache.load()
    sidecar = path.with_name(f"{path.name}.sha256")
    assert sidecar.read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    fault(path)
    damaged = path.read_bytes()
    if not keep_sidecar:
        sidecar.unlink()
    capsys.readouterr()
    again, same_path = cache.load()
    assert len(cache.trained) == 2 and same_path == path
    assert all(torch.equal(again[k], state[k]) for k in state)  # the recipe's model, retrained
    corrupt = path.with_name(f"{path.name}.corrupt")
    assert corrupt.read_bytes() == damaged  # kept for a post-mortem, not deleted
    [line] = [x for x in capsys.readouterr().err.splitlines() if " is corrupt " in x]
    assert f"the cached reference model {path} is corrupt ({why}" in line
    assert f"moved it to {corrupt.name}" in line
    assert sidecar.read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    cache.load()
    assert len(cache.trained) == 2  # the retrained entry verifies


def test_an_entry_cached_before_the_sidecars_is_trusted_if_it_loads(cache):
    """Guards against retraining every cache on upgrade: a loadable entry gets its sidecar."""
    _, path = cache.load()
    path.with_name(f"{path.name}.sha256").unlink()
    cache.load()
    assert len(cache.trained) == 1 and path.with_name(f"{path.name}.sha256").exists()


def test_a_corrupt_entry_that_cannot_be_moved_says_which_file_to_remove(cache, monkeypatch):
    """Guards: when the bad file cannot be set aside, the error names exactly what to delete."""
    _, path = cache.load()
    truncate(path)
    replace = Path.replace

    def refuse(self, target):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(RuntimeError, match=f"cannot be moved aside .*: remove {path} and run"):
        cache.load()
    assert len(cache.trained) == 1
