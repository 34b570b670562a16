"""YOLOv8n (ultralytics) trained here to detect Fashion-MNIST items pasted on canvases.

Metric: mAP50-95 (in %) from ultralytics' own validator (its NMS, box matching and AP), on the fixed
validation split of fmnist_det_data; mAP50 beside it. The paired bootstrap resamples
validation images and recomputes the mAP with ultralytics' `ap_per_class` on each resample.

Fully offline: ultralytics' settings live in the cache (sync off), it installs nothing at run
time, and the font it insists on is a copy of matplotlib's DejaVuSans. The model is built from
`yolov8n.yaml` (no weights exist offline) and trained with ultralytics' own trainer.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.workloads.base import Floor, Score, Workload, evaluation
from benchmarks.workloads.cache import cache_dir, cached_state_dict, state_sha256
from benchmarks.workloads.console import say
from benchmarks.workloads.device import model_device
from benchmarks.workloads.fmnist_det_data import DetectionRecipe, build
from benchmarks.workloads.training import TRAIN_THREADS, train

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

EVAL_BATCH = 32
TIMING_BATCH = 32
FINETUNE_STEPS, FINETUNE_BATCH, FINETUNE_LR = 100, 16, 5e-4


@dataclass(frozen=True)
class YoloRecipe:
    data: DetectionRecipe = field(default_factory=DetectionRecipe)
    model: str = "yolov8n.yaml"
    epochs: int = 40
    batch: int = 16
    imgsz: int = 160
    seed: int = 0
    ultralytics: str = ""  # its trainer's version: another one trains other weights


def offline_ultralytics():
    """Import ultralytics with its settings, downloads and auto-installs kept off the network."""
    config = cache_dir() / "ultralytics"
    font = config / "Arial.ttf"  # ultralytics downloads this font unless it is there
    if not font.exists():
        import matplotlib

        config.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "0")
    import ultralytics
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync"):
        SETTINGS.update({"sync": False})
    return ultralytics


def load() -> Workload:
    ultralytics = offline_ultralytics()
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import DetectionModel

    recipe = YoloRecipe(ultralytics=ultralytics.__version__)
    yaml = build(cache_dir(), recipe.data)
    data = check_det_dataset(str(yaml))  # ultralytics' reading of it: paths, names
    say(NAME, f"data set: {yaml.parent}")

    def fit() -> nn.Module:
        return _train(recipe, yaml)

    state, path = cached_state_dict(NAME, recipe, fit)
    model = DetectionModel(recipe.model, nc=len(data["names"]), verbose=False)
    model.load_state_dict(state)
    model.eval()
    val = _Validation(yaml, data, recipe.imgsz)
    say(NAME, f"reference from {path}; {len(val.images)} validation images")
    train_set = _train_set(data, recipe)

    def finetune(candidate: nn.Module) -> None:
        """ultralytics' own loss on its augmented training images, a few epochs' worth."""
        if not hasattr(candidate, "loss"):
            raise TypeError(f"{NAME}: the fine-tune needs an ultralytics DetectionModel")
        from ultralytics.cfg import get_cfg

        candidate.args = get_cfg()  # the loss gains (box, cls, dfl) of ultralytics' defaults
        candidate.criterion = None
        random.seed(recipe.seed)  # ultralytics' augmentations draw from these
        np.random.seed(recipe.seed)

        def batch_loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            batch = train_set.collate_fn([train_set[int(i)] for i in idx])
            batch["img"] = batch["img"].to(model_device(m)).float() / 255
            loss, _ = m.loss(batch)
            return loss.sum()

        train(candidate, batch_loss, len(train_set), batch_size=FINETUNE_BATCH,
              lr=FINETUNE_LR, seed=recipe.seed + 1, max_steps=FINETUNE_STEPS,
              desc=f"fine-tune {NAME}")

    return Workload(
        name=NAME,
        metric="mAP50-95_pct",
        higher_is_better=True,
        model=model,
        evaluate=val.evaluate,
        # Calibration (BatchNorm re-estimation) from training images, never the scored ones.
        calibration=list(torch.cat([b["img"] for b in val.load("train")[:2]]).split(16)),
        example_input=val.images[:TIMING_BATCH],
        finetune=finetune,
        checkpoint_sha256=state_sha256(state),
        evaluation=evaluation(
            f"the {len(val.images)} validation canvases of {yaml.parent.name} at "
            f"{recipe.imgsz} px, with their boxes", len(val.images),
            (val.images * 255).round().byte(), [b["cls"] for b in val.batches],
            [b["bboxes"] for b in val.batches]),
        floor=Floor(0.0, "no object found"),
        notes={"checkpoint": str(path), "data": str(yaml.parent)},
        timed_items=("images", TIMING_BATCH, "img"),
    )


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


def _train_set(data: dict, recipe: YoloRecipe):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    cfg = get_cfg(overrides={"imgsz": recipe.imgsz})
    return build_yolo_dataset(cfg, data["train"], FINETUNE_BATCH, data, mode="train", stride=32)


class _Validation:
    """The validation images, preprocessed once, and ultralytics' validator to score them."""

    def __init__(self, yaml: Path, data: dict, imgsz: int):
        # workers=0: the split is read once, in this process. Worker processes are forked from
        # a process whose runtimes (OpenVINO, oneDNN, llama.cpp) have thread pools running,
        # and a child forked mid-work segfaulted the bench on a Xeon.
        self.args = {"data": str(yaml), "imgsz": imgsz, "batch": EVAL_BATCH, "plots": False,
                     "save_json": False, "verbose": False, "split": "val", "workers": 0}
        self.data = data
        self.batches = self.load("val")
        self.images = torch.cat([b["img"] for b in self.batches])

    def load(self, split: str) -> list[dict]:
        """A split's images as the validator feeds them (letterboxed, scaled to [0, 1])."""
        validator = self._validator()
        loader = validator.get_dataloader(validator.data[split], EVAL_BATCH)
        return [validator.preprocess(batch) for batch in loader]

    def _validator(self):
        from ultralytics.models.yolo.detect import DetectionValidator

        validator = DetectionValidator(args=dict(self.args))
        validator.data = self.data
        validator.device = torch.device("cpu")
        return validator

    def evaluate(self, candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        validator, device = self._validator(), model_device(candidate)
        validator.init_metrics(_Named(self.data["names"]))
        with torch.inference_mode():
            for batch in self.batches:
                out = candidate(batch["img"].to(device, input_dtype))
                out = out[0] if isinstance(out, tuple | list) else out
                validator.update_metrics(validator.postprocess(out.float().cpu()), batch)
        per_image = {k: list(v) for k, v in validator.metrics.stats.items()}
        results = validator.get_stats()
        true_positives = torch.tensor([float(tp[:, 0].sum()) for tp in per_image["tp"]])
        return Score(100 * float(results["metrics/mAP50-95(B)"]), true_positives,
                     extras={"mAP50_pct": 100 * float(results["metrics/mAP50(B)"])},
                     resample=lambda idx: _map50_95_pct(per_image, idx))


class _Named:
    """What the validator reads from a model: its class names."""

    def __init__(self, names: dict[int, str]):
        self.names = names


def _map50_95_pct(per_image: dict[str, list[np.ndarray]], idx: torch.Tensor) -> torch.Tensor:
    """mAP50-95 in % over each row's images, as ultralytics computes it (ap_per_class)."""
    from ultralytics.utils.metrics import ap_per_class

    out = []
    for row in idx.tolist():
        stats = {k: np.concatenate([v[i] for i in row], 0) for k, v in per_image.items()}
        ap = ap_per_class(stats["tp"], stats["conf"], stats["pred_cls"], stats["target_cls"])[5]
        out.append(100 * float(ap.mean()) if len(ap) else 0.0)
    return torch.tensor(out, dtype=torch.float64)
