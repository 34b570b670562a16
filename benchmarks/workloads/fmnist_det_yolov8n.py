"""YOLOv8n (ultralytics) trained here to detect Fashion-MNIST items pasted on canvases, then
benchmarked as any user's detector is (detector.py): mAP50-95 on the fixed validation split of
fmnist_det_data. The model is built from `yolov8n.yaml` (no weights exist offline) and trained
with ultralytics' own trainer.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from benchmarks.workloads.base import Workload
from benchmarks.workloads.cache import cache_dir, cached_state_dict
from benchmarks.workloads.console import say
from benchmarks.workloads.detector import offline_ultralytics, yolo_detector
from benchmarks.workloads.fmnist_det_data import DetectionRecipe, build
from benchmarks.workloads.training import TRAIN_THREADS

NAME = "fmnist-det-yolov8n"
FAMILY = "detection"
CELLS = {
    "int8_dynamic": "full",  # skips: YOLO has no Linear layer
    "int8_static": "full",  # skips: FX cannot trace ultralytics' forward (onnx_int8 is int8)
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    "fp16": "full",
    "bf16": "full",
    "prune_l1@0.5": "full",
    "prune_l1@0.5+ft": "pr",  # ultralytics' loss and augmented data in the recovery loop
    "prune_global@0.5": "full",
    "prune_global@0.5+ft": "full",
    # Channels really removed: C2f blocks rewritten without their chunk, the head's outputs kept.
    "prune_channels@0.3": "full",
    "prune_channels@0.3+ft": "full",
    "svd@0.9": "pr",
    # The deployment path users take with ultralytics, as `yolo benchmark` compares it.
    "torchscript": "full",
    "onnx": "full",
    "onnx_int8": "pr",
    "openvino": "full",
    "openvino_int8": "full",
}



@dataclass(frozen=True)
class YoloRecipe:
    data: DetectionRecipe = field(default_factory=DetectionRecipe)
    model: str = "yolov8n.yaml"
    epochs: int = 40
    batch: int = 16
    imgsz: int = 160
    seed: int = 0
    ultralytics: str = ""  # its trainer's version: another one trains other weights


def load() -> Workload:
    ultralytics = offline_ultralytics()
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import DetectionModel

    recipe = YoloRecipe(ultralytics=ultralytics.__version__)
    yaml = build(cache_dir(), recipe.data)
    say(NAME, f"data set: {yaml.parent}")
    state, path = cached_state_dict(NAME, recipe, lambda: _train(recipe, yaml))
    say(NAME, f"reference from {path}")
    model = DetectionModel(recipe.model, nc=len(check_det_dataset(str(yaml))["names"]),
                           verbose=False)
    model.load_state_dict(state)
    return yolo_detector(NAME, model, yaml, imgsz=recipe.imgsz, seed=recipe.seed,
                         what="canvases", notes={"checkpoint": str(path),
                                                 "data": str(yaml.parent)})


def _train(recipe: YoloRecipe, yaml: Path) -> nn.Module:
    """ultralytics' trainer, seeded and deterministic, on a fixed thread count."""
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    torch_utils.NUM_THREADS = TRAIN_THREADS  # it would use cores - 1: other weights elsewhere
    yolo = YOLO(recipe.model)
    with tempfile.TemporaryDirectory() as runs:
        yolo.train(data=str(yaml), epochs=recipe.epochs, imgsz=recipe.imgsz, batch=recipe.batch,
                   seed=recipe.seed, deterministic=True, workers=0, amp=False, plots=False,
                   device="cpu", project=runs, name="train", exist_ok=True, verbose=False)
    return yolo.model.float()
