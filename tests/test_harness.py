"""Measurement and reporting: sizes of real artifacts, interleaved timing, the report files."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from torch import nn

import compress
from benchmarks.harness import report
from benchmarks.harness.measure import artifact_size, interleaved_latency, peak_batch_bytes
from benchmarks.harness.record import Record
from tests.test_verdict import make_record


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def test_int8_artifact_is_about_four_times_smaller():
    model = mlp()
    int8 = compress.get("int8_dynamic").apply(model).model
    ratio = artifact_size(model).size_bytes / artifact_size(int8).size_bytes
    assert 3.0 < ratio < 4.0  # 4x on the weights, less the fp32 biases and pickle overhead


def test_unstructured_pruning_keeps_dense_size_but_shrinks_gzip():
    model = mlp()
    pruned = compress.get("prune_global@0.8").apply(model).model
    dense, sparse = artifact_size(model), artifact_size(pruned)
    assert sparse.size_bytes == dense.size_bytes
    assert sparse.gzip_bytes < 0.6 * dense.gzip_bytes
    assert sparse.params == dense.params
    assert sparse.nonzeros <= 0.21 * dense.params + 266  # + biases, which are not pruned


def test_counts_quantized_weights():
    int8 = compress.get("int8_dynamic").apply(mlp()).model
    size = artifact_size(int8)
    assert size.params == 256 * 256 + 256 + 256 * 10 + 10
    assert size.memory_bytes < size.params * 2  # int8 weights, fp32 biases


def test_peak_batch_bytes_sees_the_live_activations():
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, padding=1))
    x = torch.randn(8, 1, 28, 28)
    activation = 8 * 28 * 28 * 4  # bytes of one channel of the batch
    # At the second conv both the ReLU's output (32 ch) and the new output (64 ch) are live;
    # the first conv's output (32 ch) may or may not have been freed by then.
    peak = peak_batch_bytes(lambda: model(x), "cpu")
    assert 96 * activation <= peak <= 128 * activation


def test_interleaved_latency_alternates_and_counts_rounds():
    calls = []
    timing = interleaved_latency(lambda: calls.append("r"), lambda: calls.append("c"),
                                 warmup=1, min_rounds=4, max_rounds=4, budget_s=0.0)
    assert len(timing.reference_ms) == len(timing.compressed_ms) == 4
    assert calls[2:] == ["r", "c", "c", "r", "r", "c", "c", "r"]


def test_interleaved_latency_sees_a_real_speed_difference():
    x = torch.randn(64, 512)
    big, small = nn.Linear(512, 2048), nn.Linear(512, 64)
    timing = interleaved_latency(lambda: big(x), lambda: small(x), min_rounds=9, budget_s=0.5)
    low, high = timing.speedup_iqr
    assert timing.speedup > 2 and low <= timing.speedup <= high


def test_report_files(tmp_path):
    records: list[Record] = [make_record("int8_static"),
                             make_record("prune_l1@0.5", execution="simulated")]
    for r in records:
        r.workload_notes = {"source": "a wheel", "floor": 0.5}
    checks = {}
    run = {"hardware_class": "cpu-test", "cpu": "test", "torch": torch.__version__,
           "threads": 1, "git_sha": "abc", "tier": "pr"}
    report.write_ledger(tmp_path / "ledger.json", records, checks, run)
    md = report.write_markdown(tmp_path, records, checks, run)
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert [c["cell"] for c in ledger["cells"]] == ["w-int8_static", "w-prune_l1@0.5"]
    assert ledger["cells"][0]["size_ratio"] == 4.0 and ledger["cells"][0]["speedup"] == 2.0
    text = md.read_text()
    assert "| w | int8_static | real |" in text and "2.00x [2.00, 2.00] sim" in text
    assert (tmp_path / "pareto-w.png").stat().st_size > 10_000
    assert "## w\n\nsource: a wheel; floor: 0.5\n" in text  # the workload's notes, once
    assert ledger["cells"][1]["workload_notes"] == {"source": "a wheel", "floor": 0.5}


def test_report_shows_each_models_picture_beside_the_references(tmp_path):
    red, grey = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 128, np.uint8)
    red[..., 0] = 255
    records = [make_record("int8_static"), make_record("prune_global@0.9")]
    for r, image in zip(records, (grey, red), strict=True):
        r.pictures = {"reference": grey, "compressed": image}
    run = {"hardware_class": "cpu-test", "cpu": "test", "torch": torch.__version__,
           "threads": 1, "git_sha": "abc", "tier": "pr"}
    text = report.write_markdown(tmp_path, records, {}, run).read_text()
    for name in ("reference", "int8_static", "prune_global_0.9"):
        assert f"(picture-w-{name}.png)" in text
    saved = np.asarray(Image.open(tmp_path / "picture-w-prune_global_0.9.png"))
    assert np.array_equal(saved, red)
    assert "pictures" not in json.dumps(records[0].to_json())


def test_a_cell_that_cannot_run_is_listed_in_the_report_with_its_reason(tmp_path):
    from benchmarks.harness.cell import measure_reference
    from benchmarks.harness.session import BenchRun
    from benchmarks.workloads.base import TOP1, Score, Workload, evaluation

    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))  # no Linear
    x = torch.randn(2, 1, 8, 8)
    workload = Workload(name="w", metric=TOP1, model=convs,
                        evaluate=lambda m, dtype: Score(50.0, torch.full((4,), 0.5)),
                        calibration=[x], example_input=x, finetune=None, checkpoint_sha256="",
                        evaluation=evaluation("random images", 4, x))
    run = BenchRun(device="cpu", threads=1, tier="pr", update_baselines=False,
                   report_dir=tmp_path, baselines_root=tmp_path / "baselines",
                   workloads={"w": workload}, references={"w": measure_reference(workload, "cpu")})
    try:
        run.run("w", "int8_dynamic")
    except compress.Unsupported as why:
        reason = str(why)
    else:
        raise AssertionError("int8_dynamic ran on a model without Linear layers")
    run.run("w", "bf16")  # a report needs one measured cell
    lines = run.finish()
    assert f"w-int8_dynamic: {reason}" in lines
    text = (tmp_path / "report.md").read_text()
    assert f"## Skipped (cannot run here)\n\n- w-int8_dynamic: {reason}\n" in text
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert {"cell": "w-int8_dynamic", "metric": "all", "status": "skipped",
            "message": f"w-int8_dynamic: {reason}"} in ledger["workload_checks"]
