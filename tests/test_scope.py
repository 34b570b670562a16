"""The matrix's scope is checked as it is collected, before any model loads: a mistyped
technique, an unknown tier or family, or one technique under two names fails at once, naming
the workload and the cell."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks import workloads
from benchmarks.harness.matrix import compressions, references
from benchmarks.workloads.base import FAMILIES


def with_workload(monkeypatch, cells: dict[str, str], family: str = "language") -> None:
    fake = SimpleNamespace(NAME="my-model", FAMILY=family, CELLS=cells)
    monkeypatch.setitem(workloads.WORKLOADS, fake.NAME, fake)


def test_every_cell_of_every_workload_resolves_and_is_marked_with_its_family():
    cells = workloads.cells()
    assert {c.family for c in cells} == set(FAMILIES)
    for param in compressions().args[1]:
        workload, technique = param.values
        family = workloads.WORKLOADS[workload].FAMILY
        assert {m.name for m in param.marks} - {"full"} == {family}
        assert ("full" in {m.name for m in param.marks}) == \
            (workloads.WORKLOADS[workload].CELLS[technique] == "full")
    assert all(param.marks[0].name == workloads.WORKLOADS[param.values[0]].FAMILY
               for param in references().args[1])


@pytest.mark.parametrize("technique, why", [
    ("gptq@33", "names no technique"),
    ("int8_statics", "names no technique"),
    ("prune_l1@0.5+fx", "names no technique"),
])
def test_a_mistyped_technique_fails_collection_naming_the_cell(monkeypatch, technique, why):
    with_workload(monkeypatch, {"int8_static": "pr", technique: "full"})
    with pytest.raises(ValueError, match=why) as excinfo:
        workloads.cells()
    assert f"my-model: cell {technique!r}" in str(excinfo.value)


def test_one_technique_under_two_names_is_an_error(monkeypatch):
    with_workload(monkeypatch, {"prune_l1@0.5+ft": "pr", "prune_l1@.50+ft": "full"})
    with pytest.raises(ValueError, match="'prune_l1@0.5\\+ft' and 'prune_l1@.50\\+ft' are the "
                                         "same technique"):
        workloads.cells()


def test_an_unknown_tier_or_family_is_an_error(monkeypatch):
    with_workload(monkeypatch, {"int8_static": "nightly"})
    with pytest.raises(ValueError, match="unknown tier 'nightly'; known: pr, full"):
        workloads.cells()
    with_workload(monkeypatch, {"int8_static": "pr"}, family="speech")
    with pytest.raises(ValueError, match="unknown family 'speech'"):
        workloads.cells()
