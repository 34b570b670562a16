"""A gate that knows what it measured: each baseline pins the evaluation it was blessed on,
and a run that evaluated something else fails, naming the file and what to do."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from benchmarks.harness import cell
from benchmarks.harness.session import BenchRun
from benchmarks.workloads.base import TOP1, Score, Workload, evaluation


def test_the_fingerprint_sees_every_sample_and_label_and_nothing_else():
    images, labels = torch.arange(60, dtype=torch.uint8).reshape(3, 4, 5), torch.tensor([0, 1, 2])
    same = evaluation("three", 3, images.clone(), labels.clone())
    assert same == evaluation("three", 3, images, labels)
    relabelled = labels.clone()
    relabelled[1] = 2
    assert evaluation("three", 3, images, relabelled).fingerprint != same.fingerprint
    assert evaluation("two", 2, images[:2], labels[:2]).fingerprint != same.fingerprint
    reshaped = images.reshape(3, 5, 4)  # the same bytes in another shape
    assert evaluation("three", 3, reshaped, labels).fingerprint != same.fingerprint
    assert evaluation("three", 3, images.int(), labels).fingerprint != same.fingerprint


@pytest.fixture(autouse=True)
def untimed(monkeypatch):
    """These tests are about what is evaluated, not timing: a millisecond model's first round
    on a busy machine must not make its cell unsound."""
    monkeypatch.setattr(cell.selfcheck, "timing_problems", lambda timing: [])


def tiny_workload(n: int = 200) -> Workload:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 64, generator=gen), torch.randint(3, (n,), generator=gen)
    torch.manual_seed(0)
    # Wide enough that a call takes about a millisecond: the timing self-checks need it.
    model = nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 3)).eval()

    def top1(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        with torch.inference_mode():
            per_sample = 100.0 * (candidate(x.to(input_dtype)).argmax(1) == y).double()
        return Score(per_sample.mean().item(), per_sample)

    return Workload(name="w", metric=TOP1, model=model,
                    evaluate=top1, calibration=[x[:64]], example_input=x[:64], finetune=None,
                    checkpoint_sha256="test",
                    evaluation=evaluation(f"{n} random points", n, x, y))


def bench_run(tmp_path, workload: Workload, *, update: bool) -> BenchRun:
    run = BenchRun(device="cpu", threads=1, tier="pr", update_baselines=update,
                   report_dir=tmp_path / "reports", baselines_root=tmp_path / "baselines")
    run.workloads["w"] = workload  # as if loaded
    run.references["w"] = reference = cell.measure_reference(workload, "cpu")
    run.workload_entries["w"] = {"reference": {
        "metric": "top1_pct", "value": reference.score.value, "tolerance": 1.0,
        "higher_is_better": True, "checkpoint_sha256": "test"},
        "evaluation": asdict(workload.evaluation)}
    return run


def blessed(tmp_path) -> BenchRun:
    run = bench_run(tmp_path, tiny_workload(), update=True)
    run.judge(run.run("w", "int8_dynamic")[0])
    run.finish()
    return run


def test_the_evaluation_is_stored_with_the_baseline(tmp_path):
    blessed(tmp_path)
    data = json.loads(next((tmp_path / "baselines").glob("*/w.json")).read_text())
    assert data["evaluation"] == asdict(tiny_workload().evaluation)
    assert data["evaluation"]["samples"] == 200


def test_the_same_evaluation_passes(tmp_path):
    blessed(tmp_path)
    run = bench_run(tmp_path, tiny_workload(), update=False)
    assert not [c for c in run.judge_reference("w") if c.failed]
    assert not [c for c in run.judge(run.run("w", "int8_dynamic")[0]) if c.failed]


def test_another_evaluation_fails_every_cell_and_the_reference_saying_what_to_do(tmp_path):
    blessed(tmp_path)
    fewer = tiny_workload(150)  # a changed split: fewer samples, other numbers
    run = bench_run(tmp_path, fewer, update=False)
    [reference_failure] = [c for c in run.judge_reference("w") if c.metric == "evaluation"]
    assert reference_failure.failed
    [cell_failure] = [c for c in run.judge(run.run("w", "int8_dynamic")[0])
                      if c.metric == "evaluation"]
    assert cell_failure.failed and cell_failure.cell == "w-int8_dynamic"
    path = next((tmp_path / "baselines").glob("*/w.json"))
    for message in (reference_failure.message, cell_failure.message):
        assert message.startswith("w: this run evaluated 150 random points (150 samples")
        assert f"baseline {path} was blessed on 200 random points (200 samples" in message
        assert "re-bless the workload (`nox -s baselines -- -k w`)" in message


def test_the_same_samples_relabelled_fail_too(tmp_path):
    blessed(tmp_path)
    workload = tiny_workload()
    relabelled = replace(workload, evaluation=replace(workload.evaluation, fingerprint="0" * 16))
    run = bench_run(tmp_path, relabelled, update=False)
    assert [c.metric for c in run.judge(run.run("w", "int8_dynamic")[0]) if c.failed] == \
        ["evaluation"]


def test_blessing_a_new_evaluation_drops_the_cells_measured_on_the_old_one(tmp_path):
    first = bench_run(tmp_path, tiny_workload(), update=True)
    for technique in ("int8_dynamic", "bf16"):
        first.judge(first.run("w", technique)[0])
    first.finish()
    second = bench_run(tmp_path, tiny_workload(150), update=True)
    second.judge(second.run("w", "bf16")[0])
    lines = second.finish()
    assert any("the evaluation changed, so cells blessed on the old one were dropped: "
               "int8_dynamic" in line for line in lines)
    data = json.loads(next((tmp_path / "baselines").glob("*/w.json")).read_text())
    assert set(data["cells"]) == {"bf16"} and data["evaluation"]["samples"] == 150
