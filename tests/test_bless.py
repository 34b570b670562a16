"""`python -m benchmarks.harness.bless ledger.json`: a maintainer blesses the class of a machine
they do not own (a CI runner's) from the ledger it uploaded, under the same rules."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness import bless
from tests.test_evaluation import bench_run, tiny_workload, untimed  # noqa: F401 (a fixture)

TECHNIQUES = ("int8_dynamic", "bf16")


def measured(tmp_path, *, update: bool):
    run = bench_run(tmp_path, tiny_workload(), update=update)
    for technique in TECHNIQUES:
        run.judge(run.run("w", technique)[0])
    run.finish()
    return tmp_path / "reports" / "ledger.json"


def test_blessing_a_ledger_writes_what_update_baselines_writes(tmp_path):
    ledger = measured(tmp_path / "ci", update=False)  # a run with no baselines: it failed
    assert bless.main([str(ledger), "--baselines", str(tmp_path / "blessed")]) == 0
    measured(tmp_path / "local", update=True)
    [from_ledger] = (tmp_path / "blessed").glob("*/w.json")
    [local] = (tmp_path / "local" / "baselines").glob("*/w.json")
    assert from_ledger.parent.name == local.parent.name  # the ledger's hardware class
    a, b = json.loads(from_ledger.read_text()), json.loads(local.read_text())
    assert set(a["cells"]) == set(TECHNIQUES)
    for key in ("schema", "workload", "hardware_class", "reference", "evaluation"):
        assert a[key] == b[key]
    for technique in TECHNIQUES:  # timing differs between the two runs; the rest does not
        for gate in ("accuracy_drop", "size_ratio"):
            assert a["cells"][technique][gate] == b["cells"][technique][gate]


def test_a_cell_whose_measurement_failed_a_self_check_is_refused(tmp_path, capsys):
    ledger = measured(tmp_path, update=False)
    data = json.loads(ledger.read_text())
    data["cells"][0]["self_check_problems"] = ["zero evaluated samples"]
    ledger.write_text(json.dumps(data))
    assert bless.main([str(ledger), "--baselines", str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "refused w-int8_dynamic: benchmark self-check failed: zero evaluated samples" in out
    [path] = (tmp_path / "b").glob("*/w.json")
    assert set(json.loads(path.read_text())["cells"]) == {"bf16"}


def test_a_ledger_from_another_stack_is_refused(tmp_path):
    ledger = measured(tmp_path, update=False)
    data = json.loads(ledger.read_text())
    data["run"]["stack_lock"] = "0123456789ab"
    ledger.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="was measured on stack 0123456789ab; this tree's "
                                         "stack.lock is"):
        bless.main([str(ledger), "--baselines", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()
