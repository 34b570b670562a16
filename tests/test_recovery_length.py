"""How long a recovery trains: the workload's own number of steps (`+ft`), or the number its
name gives (`+ft@1500`), so a full tier can measure a converged recovery beside a short one."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from benchmarks.search.space import Space
from compress import Context, Unsupported, canonical, get
from tests.test_distill import assert_same_weights, small_classifier, workload_context


def recorder(seen: list):
    def train(model: nn.Module, steps: int | None = None) -> None:
        seen.append(steps)
    return train


@pytest.mark.parametrize("name,want", [
    ("prune_l1@0.5+ft", "prune_l1@0.5+ft"),
    ("prune_l1@.50+ft@01500", "prune_l1@0.5+ft@1500"),
    ("svd@0.9+kd@300+int8_static", "svd@0.9+kd@300+int8_static")])
def test_a_recovery_length_has_one_spelling(name, want):
    assert canonical(name) == want
    assert get(name).name == name


@pytest.mark.parametrize("stage", ["ft@0", "ft@-5", "ft@1.5", "ft@", "kd@many"])
def test_a_length_that_is_no_whole_number_of_steps_is_refused_with_the_form(stage):
    with pytest.raises(KeyError, match=rf"\+{stage.partition('@')[0]}@<steps>, a whole number"):
        get(f"prune_l1@0.5+{stage}")


@pytest.mark.parametrize("name,needs,want", [("prune_l1@0.5+ft", "finetune", [None]),
                                             ("prune_l1@0.5+ft@7", "finetune", [7]),
                                             ("prune_l1@0.5+kd@9", "distill", [9])])
def test_the_length_reaches_the_workloads_training_as_steps(name, needs, want):
    seen: list = []
    get(name).apply(nn.Sequential(nn.Linear(4, 4)), Context(**{needs: recorder(seen)}))
    assert seen == want


def test_a_training_function_that_takes_no_steps_runs_its_own_length_only():
    ctx = Context(finetune=lambda model: None)
    get("prune_l1@0.5+ft").apply(nn.Sequential(nn.Linear(4, 4)), ctx)
    with pytest.raises(Unsupported, match=r"\+ft@5 sets the recovery's length, but this "
                                          r"workload's finetune takes no `steps`"):
        get("prune_l1@0.5+ft@5").apply(nn.Sequential(nn.Linear(4, 4)), ctx)


def training_steps(workload, name: str) -> int:
    """How many optimizer steps `name`'s recovery took: forwards of the trained copy with grad
    on (the teacher answers under no_grad, evaluation under inference_mode)."""
    steps = []
    hook = workload.model.register_forward_hook(
        lambda *_: steps.append(1) if torch.is_grad_enabled() else None)
    try:
        get(name).apply(workload.model, workload_context(workload))
    finally:
        hook.remove()
    return len(steps)


def test_a_classifiers_own_recovery_is_one_pass_and_a_named_one_as_many_steps_as_it_says():
    workload = small_classifier()  # 128 training images, batch 16: 8 steps a pass; own length 6
    assert training_steps(workload, "prune_l1@0.5+ft") == 6
    assert training_steps(workload, "prune_l1@0.5+ft@20") == 20  # two and a half passes
    assert training_steps(workload, "prune_l1@0.5+kd@11") == 11


def test_naming_the_workloads_own_length_is_the_same_recovery():
    workload = small_classifier()
    ctx = workload_context(workload)
    own = get("prune_l1@0.5+ft").apply(workload.model, ctx).model
    named = get("prune_l1@0.5+ft@6").apply(workload.model, ctx).model
    assert_same_weights(own, named)


def test_a_search_trains_for_the_lengths_its_scope_names():
    scope = {"prune_channels@0.5+kd": "pr", "prune_channels@0.5+kd@1500": "full",
             "int8_static": "pr"}
    space = Space.of(scope, recoveries=("ft", "kd"))
    assert space.recoveries == ("ft", "kd", "kd@1500")
    recipe = "prune_channels@0.5+kd@1500+int8_static"
    assert space.suggest(optuna.trial.FixedTrial(space.params(recipe))) == recipe
