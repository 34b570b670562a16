"""Object detection with ultralytics YOLO: mAP50-95 (in %) from ultralytics' own validator (its
NMS, box matching and AP) on a data set's validation split, mAP50 beside it. The paired
bootstrap resamples validation images and recomputes the mAP with ultralytics'
`ap_per_class` on each resample.

`yolo_detector` benchmarks a trained YOLO model a user brings (`best.pt`, or a DetectionModel)
on their data set's YAML, as `yolo val` reads it. Fully offline: ultralytics' settings live in
the cache (sync off), it installs nothing at run time, and the font it insists on is a copy of
matplotlib's DejaVuSans.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.workloads.base import MAP50_95, Floor, Score, Workload, evaluation
from benchmarks.workloads.cache import cache_dir, state_sha256
from benchmarks.workloads.console import say
from benchmarks.workloads.device import model_device
from benchmarks.workloads.training import train

EVAL_BATCH = 32
TIMING_BATCH = 32


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


def yolo_detector(
    name: str,
    model: nn.Module | str | Path,
    data: str | Path,
    *,
    imgsz: int = 640,
    finetune_steps: int = 100,
    finetune_batch: int = 16,
    finetune_lr: float = 5e-4,
    seed: int = 0,
    what: str = "images",
    notes: dict | None = None,
) -> Workload:
    """A Workload for a trained ultralytics detector: `model` is a DetectionModel or a YOLO
    checkpoint (`runs/detect/train/weights/best.pt`), `data` the data set's YAML. The recovery
    fine-tune (`+ft`) is ultralytics' own loss on its augmented training images; calibration
    (BatchNorm re-estimation, static int8) takes training images, never the scored ones."""
    offline_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    if not isinstance(model, nn.Module):
        from ultralytics import YOLO

        model = YOLO(str(model)).model.float()
    model.eval()
    found = check_det_dataset(str(data))  # ultralytics' reading of it: paths, names
    val = _Validation(Path(data), found, imgsz)
    say(name, f"{len(val.images)} validation {what}")
    train_set = _train_set(found, imgsz, finetune_batch)

    def finetune(candidate: nn.Module, steps: int | None = None) -> None:
        """ultralytics' own loss on its augmented training images, a few epochs' worth."""
        if not hasattr(candidate, "loss"):
            raise TypeError(f"{name}: the fine-tune needs an ultralytics DetectionModel")
        from ultralytics.cfg import get_cfg

        candidate.args = get_cfg()  # the loss gains (box, cls, dfl) of ultralytics' defaults
        candidate.criterion = None
        random.seed(seed)  # ultralytics' augmentations draw from these
        np.random.seed(seed)

        def batch_loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            batch = train_set.collate_fn([train_set[int(i)] for i in idx])
            batch["img"] = batch["img"].to(model_device(m)).float() / 255
            loss, _ = m.loss(batch)
            return loss.sum()

        train(candidate, batch_loss, len(train_set), batch_size=finetune_batch,
              lr=finetune_lr, seed=seed + 1, max_steps=steps or finetune_steps,
              desc=f"fine-tune {name}")

    return Workload(
        name=name,
        metric=MAP50_95,
        model=model,
        evaluate=val.evaluate,
        calibration=list(torch.cat([b["img"] for b in val.load("train")[:2]]).split(16)),
        example_input=val.images[:TIMING_BATCH],
        finetune=finetune,
        checkpoint_sha256=state_sha256(model.state_dict()),
        evaluation=evaluation(
            f"the {len(val.images)} validation {what} of {Path(data).parent.name} at "
            f"{imgsz} px, with their boxes", len(val.images),
            (val.images * 255).round().byte(), [b["cls"] for b in val.batches],
            [b["bboxes"] for b in val.batches]),
        floor=Floor(0.0, "no object found"),
        notes=notes or {},
        timed_items=("images", TIMING_BATCH, "img"),
    )


def _train_set(data: dict, imgsz: int, batch: int):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    cfg = get_cfg(overrides={"imgsz": imgsz})
    return build_yolo_dataset(cfg, data["train"], batch, data, mode="train", stride=32)


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
