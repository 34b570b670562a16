"""Knowledge distillation as a recovery (`+kd`: the fine-tune with the reference's outputs as
soft targets beside the task's loss) and into a narrower student (`student@w`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarks.workloads import training
from benchmarks.workloads.classification import classifier
from compress import Context, Unsupported, get

FAST = settings(max_examples=20, deadline=None, database=None)


def tiny_net(width: float = 1.0) -> nn.Module:
    channels = max(1, round(8 * width))
    return nn.Sequential(nn.Conv2d(1, channels, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * 6 * 6, 4))


def small_classifier(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 255, (160, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = (images.float().mean((1, 2, 3)) > 127).long() + 2 * (images[:, 0, 0, 0] > 127)
    torch.manual_seed(seed)
    return classifier("tiny", tiny_net(), test=(images[:32], labels[:32]),
                      train=(images[32:], labels[32:]), prepare=lambda x: x.float() / 255,
                      batch_size=16, finetune_steps=6, student=tiny_net, student_epochs=2)


def assert_same_weights(a: nn.Module, b: nn.Module, why: str = "") -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"{name}{': ' + why if why else ''}"


def workload_context(workload) -> Context:
    return Context(calibration=workload.calibration, example_input=workload.example_input,
                   finetune=workload.finetune, distill=workload.distill,
                   student=workload.student, teach=workload.teach)


@FAST
@given(seed=st.integers(0, 2**16), weight=st.floats(0.0, 1.0))
def test_the_soft_term_vanishes_when_the_student_is_the_teacher(seed, weight):
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed))
    loss = training.distillation_loss(torch.tensor(1.25), logits, logits.clone(), weight=weight)
    assert loss.item() == pytest.approx((1 - weight) * 1.25, abs=1e-6)


def test_the_soft_term_is_hintons():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    t = training.KD_TEMPERATURE
    p = F.softmax(teacher / t, -1)
    want = t * t * (p * (p.log() - F.log_softmax(student / t, -1))).sum()
    got = training.distillation_loss(torch.tensor(0.0), student, teacher, weight=1.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_kd_with_no_weight_on_the_soft_targets_is_the_plain_fine_tune(monkeypatch):
    workload = small_classifier()
    ctx = workload_context(workload)
    monkeypatch.setattr(training, "KD_WEIGHT", 0.0)
    ft = get("prune_l1@0.5+ft").apply(workload.model, ctx).model
    kd = get("prune_l1@0.5+kd").apply(workload.model, ctx).model
    assert_same_weights(ft, kd)


def test_kd_moves_the_student_toward_the_teacher_and_keeps_the_zeros():
    workload = small_classifier()
    ctx = workload_context(workload)
    pruned = get("prune_l1@0.7").apply(workload.model, ctx).model
    kd = get("prune_l1@0.7+kd").apply(workload.model, ctx).model
    x = workload.example_input
    with torch.no_grad():
        target = F.log_softmax(workload.model(x), -1)

        def divergence(m: nn.Module) -> float:
            return F.kl_div(F.log_softmax(m(x), -1), target, log_target=True,
                            reduction="batchmean").item()

        assert divergence(kd) < divergence(pruned)
    assert torch.equal(kd[0].weight == 0, pruned[0].weight == 0)


def test_kd_where_the_workload_has_no_distillation_is_unsupported():
    workload = small_classifier()
    ctx = Context(finetune=workload.finetune)  # a workload with a fine-tune only
    with pytest.raises(Unsupported, match=r"\+kd needs Context\.distill, which this workload"):
        get("prune_l1@0.5+kd").apply(copy.deepcopy(workload.model), ctx)


def test_a_student_is_the_declared_architecture_at_that_width_trained_toward_the_teacher():
    workload = small_classifier()
    with torch.no_grad():  # a confident teacher, far from an untrained net's near-uniform guess
        workload.model[-1].weight.mul_(20)
    out = get("student@0.5").apply(workload.model, workload_context(workload))
    student = out.model
    assert [type(m) for m in student] == [type(m) for m in workload.model]
    assert student[0].out_channels == 4  # half of the reference's 8
    params = sum(p.numel() for p in student.parameters())
    reference = sum(p.numel() for p in workload.model.parameters())
    assert out.extras["params_fraction"] == pytest.approx(params / reference, abs=1e-4)
    assert out.execution == "real"
    x = workload.example_input
    with torch.no_grad():
        target = F.log_softmax(workload.model(x), -1)
        untrained = tiny_net(0.5)
        divergence = {name: F.kl_div(F.log_softmax(m(x), -1), target, log_target=True,
                                     reduction="batchmean").item()
                      for name, m in (("student", student), ("untrained", untrained))}
    assert divergence["student"] < divergence["untrained"]


def test_teaching_a_student_is_seeded_so_it_repeats():
    workload = small_classifier()
    ctx = workload_context(workload)
    first = get("student@0.5").apply(workload.model, ctx).model
    again = get("student@0.5").apply(workload.model, ctx).model
    assert_same_weights(first, again, "teaching a student is seeded, so it repeats")


@pytest.mark.parametrize("width", ["0", "1", "1.5", "-0.5"])
def test_a_student_width_outside_zero_to_one_is_refused_by_name(width):
    with pytest.raises(KeyError, match=r"width must be in \(0, 1\)"):
        get(f"student@{width}")


def test_a_student_where_the_workload_declares_none_is_unsupported():
    workload = small_classifier()
    ctx = Context(finetune=workload.finetune, distill=workload.distill)
    with pytest.raises(Unsupported, match="declares no student architecture"):
        get("student@0.5").apply(workload.model, ctx)


def test_a_student_no_smaller_than_the_reference_is_refused():
    workload = small_classifier()
    ctx = workload_context(workload)
    ctx.student = lambda width: tiny_net(2.0)
    with pytest.raises(Unsupported, match="not fewer than the reference's"):
        get("student@0.5").apply(workload.model, ctx)
