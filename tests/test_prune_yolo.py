"""prune_channels on ultralytics YOLOv8n: C2f blocks are rewritten exactly, the Detect head's
outputs keep their channels, and the pruned model still predicts, trains with ultralytics'
loss and saves."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress import Context, get
from compress.base import relative_difference
from compress.prune.channels import SplitC2f, output_layers, split_c2f
from tests.test_techniques import n_params, randomize_bn

pytest.importorskip("ultralytics")

NC = 10


@pytest.fixture(scope="module")
def yolo():
    """An untrained YOLOv8n with random BatchNorm (so a swapped half of a C2f would show)."""
    from benchmarks.workloads.detector import offline_ultralytics

    offline_ultralytics()  # nothing reaches the network
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    randomize_bn(model, torch.Generator().manual_seed(0))
    return model.eval()


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 160, 160, generator=torch.Generator().manual_seed(1))


def outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The decoded predictions and the raw head maps (boxes, scores, features) of eval mode."""
    with torch.no_grad():
        y, raw = model(x)
    return [y, raw["boxes"], raw["scores"], *raw["feats"]]


def test_split_c2f_computes_the_same_function(yolo):
    from ultralytics.nn.modules.block import C2f

    split = copy.deepcopy(yolo)
    split_c2f(split)
    assert not any(isinstance(m, C2f) for m in split.modules())
    assert sum(isinstance(m, SplitC2f) for m in split.modules()) == 8  # YOLOv8n has eight
    x = images()
    for got, want in zip(outputs(split, x), outputs(yolo, x), strict=True):
        assert relative_difference(got, want) < 1e-5


def test_the_detect_outputs_are_the_output_layers(yolo):
    detect = yolo.model[-1]
    want = [*(branch[-1] for branch in detect.cv2), *(branch[-1] for branch in detect.cv3),
            detect.dfl.conv]
    got = output_layers(yolo, images(1))
    assert sorted(map(id, got)) == sorted(map(id, want))


def test_pruned_yolo_predicts_trains_and_saves(yolo):
    x = images()
    out = get("prune_channels@0.3").apply(yolo, Context(example_input=x))
    pruned, detect = out.model, out.model.model[-1]
    assert out.execution == "real"
    assert n_params(pruned) < 0.6 * n_params(yolo)  # 30 % of the channels: about half the weights
    # The head's outputs keep their channels, the DFL its fixed weights; the neck was pruned.
    assert [b[-1].out_channels for b in detect.cv2] == [4 * detect.reg_max] * 3
    assert [b[-1].out_channels for b in detect.cv3] == [NC] * 3
    assert torch.equal(detect.dfl.conv.weight, yolo.model[-1].dfl.conv.weight)
    assert detect.cv2[0][0].conv.in_channels < yolo.model[-1].cv2[0][0].conv.in_channels
    y = outputs(pruned, x)[0]
    assert y.shape == outputs(yolo, x)[0].shape and torch.isfinite(y).all()

    buffer = io.BytesIO()
    torch.save(pruned, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(outputs(loaded, x)[0], y)

    from ultralytics.cfg import get_cfg

    loaded.args, loaded.criterion = get_cfg(), None  # as the workload's fine-tune sets them
    batch = {"img": x, "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.2]])}
    loss, _ = loaded.train().loss(batch)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert loaded.model[-1].cv3[0][-1].weight.grad is not None


def test_compress_does_not_import_ultralytics():
    """compress needs no ultralytics: pruning another model leaves it unimported."""
    code = ("import sys, torch; from compress import Context, get; "
            "model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 3)); "
            "ctx = Context(example_input=torch.randn(1, 3, 8, 8)); "
            "get('prune_channels@0.5').apply(model, ctx); "
            "assert 'ultralytics' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
