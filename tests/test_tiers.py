"""The tiers and baselines as a specification: a PR cell can still move, and a class blessed
on the locked stack covers every workload and every cell of its scope (a cell blessed on
another class only is on record as awaiting its bless there)."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness.record import collapsed
from benchmarks.harness.verdict import BASELINES
from benchmarks.workloads import WORKLOADS

FILES = {path: json.loads(path.read_text()) for path in sorted(BASELINES.glob("*/*.json"))}
ON_THE_LOCK = {path: data for path, data in FILES.items()
               if data["provenance"].get("stack_lock") not in (None, "none")}


def compressed_metric(data: dict, technique: str) -> float:
    reference = data["reference"]
    drop = data["cells"][technique]["accuracy_drop"]["value"]
    return reference["value"] - drop if reference["higher_is_better"] else reference["value"] + drop


@pytest.mark.parametrize("path", [p for p, d in FILES.items() if "floor" in d["reference"]],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_pr_cell_is_collapsed_to_the_tasks_floor(path):
    data = FILES[path]
    at_floor = [t for t, tier in WORKLOADS[data["workload"]].CELLS.items()
                if tier == "pr" and t in data["cells"] and collapsed(
                    data["reference"]["value"], compressed_metric(data, t),
                    data["reference"]["floor"])]
    assert not at_floor, (f"PR cells of {path} score at the task's floor "
                          f"({data['reference']['floor_is']}), so they cannot see a "
                          f"regression: move them to the full tier ({at_floor})")


@pytest.mark.parametrize("path", list(ON_THE_LOCK), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_baseline_blessed_on_the_lock_covers_its_scope(path):
    data = ON_THE_LOCK[path]
    scope = set(WORKLOADS[data["workload"]].CELLS)
    covered = {*data["cells"], *data.get("skipped", {}), *data.get("awaiting_bless", {})}
    assert scope <= covered, f"{path} has no baseline for {sorted(scope - covered)}"
    assert "evaluation" in data


@pytest.mark.parametrize("path", [p for p, d in ON_THE_LOCK.items() if d.get("awaiting_bless")],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_cell_awaiting_its_bless_is_blessed_elsewhere_and_not_in_the_pr_tier(path):
    """A cell may wait for a machine of this class (its bench fails it meanwhile, or skips it),
    but only a cell tried somewhere, and never a PR cell: pull requests would fail here."""
    data = ON_THE_LOCK[path]
    cells = WORKLOADS[data["workload"]].CELLS
    elsewhere = {t for p, d in FILES.items() if p.stem == path.stem and p != path
                 for t in (*d["cells"], *d.get("skipped", {}))}
    for technique in data["awaiting_bless"]:
        assert technique in elsewhere, f"{path}: {technique} awaits a bless but no class tried it"
        assert cells.get(technique) != "pr", (f"{path}: PR cell {technique} has no baseline on "
                                              "this class: bless it here before it joins the "
                                              "PR tier")


@pytest.mark.parametrize("hardware_class", sorted({p.parent.name for p in ON_THE_LOCK}))
def test_a_class_blessed_on_the_lock_has_every_workload(hardware_class):
    blessed = {p.stem for p in FILES if p.parent.name == hardware_class}
    assert set(WORKLOADS) <= blessed, f"{hardware_class} lacks {sorted(set(WORKLOADS) - blessed)}"
