"""A detection data set made from Fashion-MNIST: items pasted on canvases, in YOLO format.

Deterministic from its recipe: the same seed writes the same images and labels on any machine.
Training images take their items from Fashion-MNIST's training split, validation images from
its test split. Each image holds 1 to `max_objects` items at random scales and places, barely
overlapping, on a dark noisy background; each box is the tight box of the item's visible
pixels, labelled with its Fashion-MNIST class.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.workloads import fashion_mnist

VISIBLE = 24  # a pixel brighter than this (of 255) belongs to the item, for its tight box
MAX_OVERLAP = 0.1  # IoU above which a new item is placed elsewhere


@dataclass(frozen=True)
class DetectionRecipe:
    canvas: int = 160
    train_images: int = 400
    val_images: int = 100
    max_objects: int = 4
    min_scale: float = 1.0  # items are drawn 28 x scale pixels wide
    max_scale: float = 2.0
    noise: int = 24  # background pixels are uniform in [0, noise)
    seed: int = 0


def build(root: Path, recipe: DetectionRecipe) -> Path:
    """Write the data set under `root` (once per recipe) and return its data.yaml."""
    key = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:12]
    folder = root / f"fmnist-det-{key}"
    yaml = folder / "data.yaml"
    if yaml.exists():
        return yaml
    tmp = folder.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    data = fashion_mnist.load()
    rng = np.random.default_rng(recipe.seed)
    splits = {"train": (data.train_images, data.train_labels, recipe.train_images),
              "val": (data.test_images, data.test_labels, recipe.val_images)}
    for split, (images, labels, count) in splits.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(count):
            canvas, boxes = compose(images.numpy(), labels.numpy(), rng, recipe)
            Image.fromarray(canvas).save(tmp / "images" / split / f"{i:04d}.png")
            (tmp / "labels" / split / f"{i:04d}.txt").write_text(
                "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in boxes))
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(fashion_mnist.CLASSES))
    # `path` is written absolute, so the yaml works from any working directory.
    (tmp / "data.yaml").write_text(
        f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    tmp.rename(folder)  # atomic: an interrupted run never leaves half a data set
    return yaml


def compose(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            recipe: DetectionRecipe) -> tuple[np.ndarray, list[tuple[int, float, ...]]]:
    """One canvas (uint8, H x W) and its YOLO boxes (class, cx, cy, w, h; relative)."""
    size = recipe.canvas
    canvas = rng.integers(0, recipe.noise, (size, size), dtype=np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(int(rng.integers(1, recipe.max_objects + 1))):
        index = int(rng.integers(len(images)))
        side = int(round(28 * rng.uniform(recipe.min_scale, recipe.max_scale)))
        item = np.asarray(Image.fromarray(images[index]).resize((side, side), Image.BILINEAR))
        rows, cols = np.nonzero(item > VISIBLE)
        if len(rows) == 0:
            continue
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        for _attempt in range(50):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            box = (x + left, y + top, x + right, y + bottom)
            if all(_iou(box, other) <= MAX_OVERLAP for other in placed):
                break
        else:
            continue  # no free place: fewer items on this canvas
        region = canvas[y:y + side, x:x + side]
        np.maximum(region, item, out=region)
        placed.append(box)
        x0, y0, x1, y1 = box
        boxes.append((int(labels[index]), (x0 + x1) / 2 / size, (y0 + y1) / 2 / size,
                      (x1 - x0) / size, (y1 - y0) / size))
    return canvas, boxes


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0
