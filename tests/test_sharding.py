"""Sharded runs (`nox -s bench -- -n 2`, pytest-xdist): each worker pickles its records into a
shard, and the controller reports the whole run from the shards. A sharded run must report
what a serial run reports, even for workloads whose metric resamples with a local lambda
(YOLO's mAP), which pickle cannot save.
"""

from __future__ import annotations

import json
import os
import pickle
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks.harness.session import BenchRun
from benchmarks.workloads import WORKLOADS
from benchmarks.workloads.base import MAP50_95, TOP1, Score, Workload, evaluation
from tests.test_verdict import make_record

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES, N_CLASSES = 512, 10


# --- fake workloads: tiny, seeded and fast; "fake-det" scores like YOLO, with a local lambda


def _macro_recall_pct(correct: torch.Tensor, labels: torch.Tensor,
                      idx: torch.Tensor) -> torch.Tensor:
    """The mean per-class recall (in %) of each row of samples: no mean of per-sample values,
    so its paired bootstrap needs Score.resample."""
    hits, classes = correct[idx].double(), labels[idx]
    per_class = torch.zeros(len(idx), N_CLASSES, dtype=torch.float64)
    count = per_class.scatter_add(1, classes, torch.ones_like(hits))
    recall = per_class.scatter_add(1, classes, hits) / count.clamp(min=1)
    return 100 * recall.sum(1) / (count > 0).sum(1)


def _load(name: str, seed: int, resampled: bool) -> Workload:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                          nn.ReLU(), nn.Linear(256, N_CLASSES)).eval()
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(N_SAMPLES, 1, 28, 28, generator=gen)
    with torch.no_grad():
        labels = model(images).argmax(1)
    noisy = torch.rand(N_SAMPLES, generator=gen) < 0.2  # so that the reference is not perfect
    labels[noisy] = torch.randint(N_CLASSES, (int(noisy.sum()),), generator=gen)

    def evaluate(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        with torch.inference_mode():
            correct = candidate(images.to(input_dtype)).float().argmax(1) == labels
        if not resampled:
            return Score(100 * float(correct.double().mean()), 100 * correct.double())
        everything = torch.arange(N_SAMPLES).unsqueeze(0)
        return Score(float(_macro_recall_pct(correct, labels, everything)[0]),
                     100 * correct.double(),
                     resample=lambda idx: _macro_recall_pct(correct, labels, idx))

    return Workload(name=name, metric=MAP50_95 if resampled else TOP1, model=model,
                    evaluate=evaluate,
                    calibration=[images[:64]], example_input=images[:64], finetune=None,
                    checkpoint_sha256=f"fake-{seed}",
                    evaluation=evaluation(f"{N_SAMPLES} seeded images", N_SAMPLES, labels))


FAKE_WORKLOADS = {
    "fake-cls": SimpleNamespace(NAME="fake-cls", FAMILY="classification",
                                CELLS={"int8_dynamic": "pr", "prune_global@0.5": "pr"},
                                load=partial(_load, "fake-cls", 1, False)),
    "fake-det": SimpleNamespace(NAME="fake-det", FAMILY="detection",
                                CELLS={"int8_dynamic": "pr", "prune_l1@0.5": "pr"},
                                load=partial(_load, "fake-det", 2, True)),
}
FAKE_CELLS = [f"{name}-{technique}" for name, module in FAKE_WORKLOADS.items()
              for technique in module.CELLS]

# The pytester directory's conftest: the fake workloads in place of the real ones (before the
# matrix modules are collected, in the controller and in each worker), then the repository's
# own conftest.py (copied beside it) as a plugin.
CONFTEST = f"""
import sys

sys.path.insert(0, {str(REPO)!r})
from benchmarks import workloads
from tests.test_sharding import FAKE_WORKLOADS

workloads.WORKLOADS.clear()
workloads.WORKLOADS.update(FAKE_WORKLOADS)
pytest_plugins = ["compress_bench_conftest"]
"""


def _cells(report_dir: Path) -> dict[str, tuple]:
    """Each cell of a run's ledger: its verdict, accuracy drop and the drop's 95 % interval
    (timing differs between runs, so no speedups)."""
    ledger = json.loads((report_dir / "ledger.json").read_text())
    return {c["cell"]: (c["verdict"], c["accuracy_drop"], c.get("accuracy_drop_ci"))
            for c in ledger["cells"]}


def _bless(baselines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake cells' baselines, measured here as `--update-baselines` measures them (quicker
    than one more pytest process), with speedup gates so wide that timing, which is not what
    this test is about, decides no verdict."""
    for name, module in FAKE_WORKLOADS.items():
        monkeypatch.setitem(WORKLOADS, name, module)
    run = BenchRun("cpu", 1, "pr", True, baselines.parent / "blessed", baselines)
    for name, module in FAKE_WORKLOADS.items():
        for technique in module.CELLS:
            run.run(name, technique)
    run.finish()
    for path in baselines.glob("*/*.json"):
        data = json.loads(path.read_text())
        for gates in data["cells"].values():
            for metric, gate in gates.items():
                if metric.endswith("speedup"):
                    gate["tolerance"] = 1e9
        path.write_text(json.dumps(data))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity")
                    else (os.cpu_count() or 1) < 2, reason="-n 2 needs two cores")
def test_a_sharded_run_reports_what_a_serial_run_reports(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Guards `nox -s bench -- -n 2`: the workers' records (one workload resampling its metric
    with a local lambda, like YOLO) reach the controller, which writes one ledger with every
    cell, and each cell's verdict and accuracy-drop interval are those of a serial run. (When
    records held their resamplers, the worker with the lambda left an empty shard and the
    controller died with EOFError.)"""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(compress_bench_conftest=(REPO / "conftest.py").read_text())
    pytester.makepyfile(test_matrix=(REPO / "benchmarks" / "test_matrix.py").read_text())
    baselines = pytester.path / "baselines"
    _bless(baselines, monkeypatch)

    def bench(report_dir: str, *args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-q", f"--baselines-dir={baselines}",
            f"--report-dir={pytester.path / report_dir}", *args, timeout=120)

    serial = bench("serial")
    sharded = bench("sharded", "-n", "2")

    for run in (serial, sharded):
        assert run.ret == 0, run.stdout.str()
        run.assert_outcomes(passed=len(FAKE_WORKLOADS) + len(FAKE_CELLS))
    assert "EOFError" not in sharded.stdout.str() and "INTERNALERROR" not in sharded.stdout.str()
    assert not (pytester.path / "sharded" / "shards").exists()
    assert list(_cells(pytester.path / "sharded")) == FAKE_CELLS
    assert _cells(pytester.path / "sharded") == _cells(pytester.path / "serial")
    assert all(verdict == "pass" and interval is not None
               for verdict, _, interval in _cells(pytester.path / "serial").values())


# --- the pieces: a record pickles by itself; a shard that cannot be saved or read fails the
# controller with a message that names it


def _record_with_lambda_resamplers():
    record = make_record()
    correct = (torch.arange(40) % 4 != 0).double() * 100
    record.per_sample = {"reference": correct, "compressed": correct.roll(1)}
    record.resamplers = {name: lambda idx, x=x: x[idx].mean(1).sqrt()
                         for name, x in record.per_sample.items()}
    return record


def test_a_record_pickles_with_its_intervals_and_without_its_resamplers():
    record = _record_with_lambda_resamplers()
    restored = pickle.loads(pickle.dumps(record))
    assert restored.resamplers == {}
    assert restored.drop_interval == _record_with_lambda_resamplers().drop_interval
    assert restored.speedup_intervals == record.speedup_intervals
    assert restored.to_json() == record.to_json()


def _run(tmp_path: Path) -> BenchRun:
    return BenchRun("cpu", 1, "pr", False, tmp_path / "reports", tmp_path / "baselines")


def test_a_worker_that_cannot_save_its_records_fails_the_controller(tmp_path):
    run = _run(tmp_path)
    run.workload_entries = {"w": lambda: None}  # unpicklable
    shard = tmp_path / "shards" / "gw0.pkl"
    with pytest.raises((pickle.PicklingError, AttributeError)):
        run.save_shard(shard)
    assert [p.name for p in shard.parent.iterdir()] == ["gw0.pkl"]  # no temporary file left
    with pytest.raises(RuntimeError, match=r"gw0\.pkl: .*could not save its records: .*lambda"):
        _run(tmp_path).add_shards([shard])


def test_a_shard_that_cannot_be_read_is_a_clear_error(tmp_path):
    run = _run(tmp_path)
    run.records.append(_record_with_lambda_resamplers())
    good, empty = tmp_path / "shards" / "gw0.pkl", tmp_path / "shards" / "gw1.pkl"
    run.save_shard(good)
    empty.touch()
    with pytest.raises(RuntimeError, match=r"gw1\.pkl: cannot read .*EOFError.*rerun"):
        _run(tmp_path).add_shards([good, empty])
    whole = _run(tmp_path)
    whole.add_shards([good])
    assert [r.cell for r in whole.records] == ["w-int8_static"]
