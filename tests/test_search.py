"""The accuracy-driven search (`nox -s optimize`): its space, its budget, and a whole search of
a small classifier that writes its front and best recipe."""

from __future__ import annotations

import json
import math
import time
import types

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import compress
from benchmarks import workloads
from benchmarks.harness.pareto import dominates
from benchmarks.search.__main__ import size_bytes
from benchmarks.search.optimize import Budget, Outcome, Search
from benchmarks.search.space import Space
from tests.test_distill import small_classifier

SCOPE = {"int8_static": "pr", "kmeans@16,per=channel": "full", "prune_l1@0.5": "pr",
         "prune_channels@0.5+ft": "pr", "svd@0.9": "full", "gptq@64+gguf_q4_1": "full",
         "lora": "full"}


def test_the_space_is_the_scopes_techniques_in_structure_recovery_value_order():
    space = Space.of(SCOPE, recoveries=("ft", "kd"), student=True)
    # prune_l1 runs simulated on a CPU (masks): it saves neither bytes nor time, so it is not
    # searched; lora is an adapter, not a compression.
    assert space.structures == ("prune_channels", "svd", "student")
    assert space.recoveries == ("ft", "kd")
    assert space.values == (("int8_static",), ("kmeans",), ("gptq", "gguf_q4_1"))
    assert space.fixed["kmeans"] == {}  # per and clusters are both searched


def test_a_student_is_searched_only_where_the_workload_declares_one():
    assert "student" not in Space.of(SCOPE).structures


def test_only_keeps_the_named_techniques_and_refuses_unknown_ones():
    space = Space.of(SCOPE, only=["int8_static", "prune_channels"])
    assert space.structures == ("prune_channels",) and space.values == (("int8_static",),)
    with pytest.raises(ValueError, match="--only int8_statik: no such technique"):
        Space.of(SCOPE, only=["int8_statik"])
    with pytest.raises(ValueError, match="nothing to search"):
        Space.of({"prune_l1@0.5": "pr"})


@settings(max_examples=20, deadline=None, database=None)
@given(seed=st.integers(0, 2**16))
def test_a_space_of_structures_only_never_suggests_the_reference(seed):
    space = Space.of({"prune_channels@0.5": "pr", "svd@0.9": "full"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    recipe = space.suggest(study.ask())
    assert recipe.partition("@")[0] in {"prune_channels", "svd"}


def test_a_speed_the_workload_does_not_measure_is_refused_before_any_trial(tmp_path,
                                                                           monkeypatch):
    tiny_workload(monkeypatch, {"int8_dynamic": "pr"})
    search = Search("tiny", Budget(max_drop=1.0), speed="decode_speedup", log=lambda _: None)
    with pytest.raises(SystemExit, match="--speed decode_speedup: the tiny cells measure "
                                         "speedup"):
        search.run(tmp_path)
    assert search.outcomes == []


@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 2**16))
def test_every_recipe_the_space_suggests_is_a_canonical_technique_name(seed):
    space = Space.of(SCOPE, recoveries=("ft", "kd"), student=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    recipe = space.suggest(trial)
    assert compress.canonical(recipe) == recipe
    technique = compress.get(recipe)
    stages = recipe.split("+")
    assert stages[0].partition("@")[0] in {"prune_channels", "svd", "student", "int8_static",
                                           "kmeans", "gptq"}
    if "student" in recipe:
        assert not {"ft", "kd"} & set(stages)  # a student is trained already
    assert technique.name == recipe


@pytest.mark.parametrize("recipe", ["int8_static", "prune_channels@0.5+ft", "svd@0.9",
                                    "prune_channels@0.5+kd+int8_static@float=2", "student@0.5",
                                    "gptq@64+gguf_q4_1", "kmeans@16,per=channel"])
def test_a_scope_cell_is_a_point_of_the_space_it_starts_a_search_from(recipe):
    space = Space.of(SCOPE, recoveries=("ft", "kd"), student=True)
    trial = optuna.trial.FixedTrial(space.params(recipe))
    assert space.suggest(trial) == recipe


def test_a_recipe_outside_the_space_is_no_start():
    space = Space.of(SCOPE)
    assert space.params("prune_l1@0.5") is None  # simulated structure: not searched
    assert space.params("prune_channels@0.5+kd") is None  # no +kd in this space


def outcome(number, drop, size, speed, execution="real") -> Outcome:
    return Outcome(number, f"recipe{number}", 1.0, accuracy_drop=drop, size_ratio=size,
                   size_bytes=1e6 / size, speedup=speed, execution=execution)


def test_the_shortfall_is_zero_within_the_budget_and_grows_with_each_limit_missed():
    budget = Budget(max_drop=1.0, min_speedup=2.0, max_size_bytes=0.5e6)
    assert budget.shortfall(outcome(0, 0.5, 4.0, 3.0)) == 0
    assert budget.shortfall(outcome(1, 1.5, 4.0, 3.0)) == pytest.approx(0.5)
    assert budget.shortfall(outcome(2, 0.5, 1.0, 1.0)) == pytest.approx(0.5 + 1.0)


@pytest.mark.parametrize("prefer, best", [("size", 1), ("speed", 2), ("both", 3)])
def test_the_best_recipe_is_the_preferred_one_within_the_budget(prefer, best):
    search = Search("w", Budget(max_drop=1.0), prefer=prefer)
    search.outcomes = [outcome(0, 2.0, 50.0, 50.0),  # outside the budget, whatever it wins
                       outcome(1, 0.5, 8.0, 1.0), outcome(2, 0.5, 1.0, 6.0),
                       outcome(3, 0.9, 4.0, 4.0)]
    found, meets = search.best()
    assert meets and found.number == best


def test_when_no_recipe_meets_the_budget_the_closest_is_still_the_best():
    search = Search("w", Budget(max_drop=1.0))
    search.outcomes = [outcome(0, 3.0, 8.0, 2.0), outcome(1, 1.2, 2.0, 1.0),
                       Outcome(2, "broken", 1.0, error="failed: RuntimeError")]
    found, meets = search.best()
    assert not meets and found.number == 1


def test_the_front_is_the_measured_recipes_no_other_beats():
    search = Search("w", Budget(max_drop=1.0))
    search.outcomes = [outcome(0, 0.1, 4.0, 2.0), outcome(1, 0.2, 3.0, 1.5),  # 1 is beaten
                       outcome(2, 1.0, 8.0, 1.0), outcome(3, 0.0, 1.0, 1.0)]
    front = {o.number for o in search.front()}
    assert front == {0, 2, 3}


@pytest.mark.parametrize("text, want", [("2MB", 2e6), ("800kb", 8e5), ("1500000", 1.5e6),
                                        ("1.5 GB", 1.5e9)])
def test_sizes_are_read_with_their_unit(text, want):
    assert size_bytes(text) == want


def tiny_workload(monkeypatch, cells: dict[str, str]):
    """A small classifier registered as the workload `tiny` with this scope; its Workload."""
    workload = small_classifier()
    module = types.ModuleType("tiny_workload")
    module.NAME, module.FAMILY, module.CELLS = "tiny", "classification", cells
    module.load = lambda: workload
    monkeypatch.setattr("benchmarks.search.optimize.WORKLOADS", {"tiny": module})
    return workload


def test_a_whole_search_writes_its_front_and_best_recipe_even_when_none_meets(tmp_path,
                                                                              monkeypatch):
    workload = tiny_workload(monkeypatch, {"int8_static": "pr", "prune_channels@0.5+ft": "pr",
                                           "kmeans@16": "full"})
    lines: list[str] = []
    # A drop below zero is a budget no recipe of an untrained net meets for sure.
    search = Search("tiny", Budget(max_drop=-100.0, minutes=5, patience=50, max_trials=4),
                    log=lines.append)
    best_path = search.run(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"best.json", "front.json", "trials.json", "front.png"} <= written
    best = json.loads(best_path.read_text())
    assert best["meets_budget"] is False and best["shortfall"] > 0
    assert any("NO recipe met the budget" in line for line in lines)
    trials = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert trials[0]["recipe"] == "int8_static"  # the scope's PR-tier value chain starts
    assert 1 <= len(trials) <= 4
    measured = [t for t in trials if t["error"] == ""]
    front = json.loads((tmp_path / "front.json").read_text())["front"]
    objectives = search.objectives
    for point in front:
        assert not any(dominates(other, point, objectives) for other in measured)
    assert all(math.isfinite(t["size_ratio"]) for t in measured)
    assert torch.equal(workload.model[0].weight, small_classifier().model[0].weight)


def test_a_space_of_one_recipe_stops_once_exhausted_not_on_the_clock(tmp_path, monkeypatch):
    tiny_workload(monkeypatch, {"int8_dynamic": "pr"})
    search = Search("tiny", Budget(max_drop=100.0, minutes=10, patience=1000),
                    only=("int8_dynamic",), log=lambda _: None)
    start = time.monotonic()
    search.run(tmp_path)
    assert [o.recipe for o in search.outcomes] == ["int8_dynamic"]
    assert time.monotonic() - start < 120
    assert search.best() == (search.outcomes[0], True)


@pytest.mark.parametrize("args, error", [
    (["--max-drop", "abc"], "--max-drop 'abc': a number (1.0) or a percentage (12%)"),
    (["--max-drop", "1", "--only", "int8_statik"], "--only int8_statik: no such technique"),
    (["--max-drop", "1", "--max-size", "big"], "'big' is not a size"),
])
def test_the_command_refuses_a_bad_budget_before_loading_anything(args, error, monkeypatch,
                                                                   capsys):
    from benchmarks.search.__main__ import main

    monkeypatch.setattr(workloads, "WORKLOADS", dict(workloads.WORKLOADS))
    with pytest.raises(SystemExit) as exit_:
        main(["fmnist-cnn", *args])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err
