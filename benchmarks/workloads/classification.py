"""Image classification on Fashion-MNIST: top-1 on the full 10k test set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads import fashion_mnist
from benchmarks.workloads.base import Score, Workload, chance_top1, evaluation
from benchmarks.workloads.cache import cached_state_dict, state_sha256
from benchmarks.workloads.device import model_device
from benchmarks.workloads.training import train

EVAL_BATCH = 500
TIMING_BATCH = 32
CALIBRATION_BATCHES, CALIBRATION_BATCH = 8, 64


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained reference model; its hash keys the cache."""

    arch: str
    init: str  # where the starting weights come from
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    # The recovery fine-tune of `+ft` cells: a few hundred steps of the same loop.
    finetune_steps: int = 200
    finetune_lr: float = 5e-4


def image_classifier(
    name: str,
    recipe: Recipe,
    build: Callable[[], nn.Module],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    start: Callable[[], nn.Module] | None = None,
) -> Workload:
    """A Workload for a classifier built by `build` and trained (or fine-tuned) per `recipe`.

    `prepare` turns uint8 (N, 28, 28) images into the model's input batch; `start` builds the
    model training starts from (pretrained weights, say), only when there is no cached one.
    """
    data = fashion_mnist.load()

    def batch_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        device = model_device(model)
        logits = model(prepare(data.train_images[idx]).to(device))
        return F.cross_entropy(logits, data.train_labels[idx].to(device))

    def fit() -> nn.Module:
        return train((start or build)(), batch_loss, len(data.train_labels), epochs=recipe.epochs,
                     batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed,
                     desc=f"train {name}")

    state, path = cached_state_dict(name, recipe, fit)
    model = build()
    model.load_state_dict(state)
    model.eval()

    def evaluate(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        correct, device = [], model_device(candidate)
        with torch.inference_mode():
            for start in range(0, len(data.test_labels), EVAL_BATCH):
                x = prepare(data.test_images[start:start + EVAL_BATCH]).to(device, input_dtype)
                pred = candidate(x).argmax(dim=1).cpu()
                correct.append(pred == data.test_labels[start:start + EVAL_BATCH])
        per_sample = 100.0 * torch.cat(correct).float()
        return Score(per_sample.mean().item(), per_sample)

    def finetune(candidate: nn.Module) -> None:
        train(candidate, batch_loss, len(data.train_labels), epochs=1,
              batch_size=recipe.batch_size, lr=recipe.finetune_lr, seed=recipe.seed + 1,
              max_steps=recipe.finetune_steps, desc=f"fine-tune {name}")

    # Calibration comes from the training split, never the test split it is scored on.
    calib_idx = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(7))
    calibration = [prepare(data.train_images[i])
                   for i in calib_idx[:CALIBRATION_BATCHES * CALIBRATION_BATCH]
                   .split(CALIBRATION_BATCH)]
    return Workload(
        name=name,
        metric="top1_pct",
        higher_is_better=True,
        model=model,
        evaluate=evaluate,
        calibration=calibration,
        example_input=prepare(data.test_images[:TIMING_BATCH]),
        finetune=finetune,
        checkpoint_sha256=state_sha256(state),
        evaluation=evaluation("Fashion-MNIST t10k: all 10,000 test images and labels",
                              len(data.test_labels), data.test_images, data.test_labels),
        floor=chance_top1(data.test_labels),
        notes={"checkpoint": str(path), "recipe": recipe.__dict__},
    )



