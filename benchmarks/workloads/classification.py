"""Image classification: top-1 on a test set. `classifier` benchmarks a trained model a user
brings; `image_classifier` trains ours on Fashion-MNIST first (top-1 on the full 10k test set)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from benchmarks.workloads import fashion_mnist, training
from benchmarks.workloads.base import TOP1, Score, Workload, chance_top1, evaluation
from benchmarks.workloads.cache import cached_state_dict, state_sha256
from benchmarks.workloads.device import model_device

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


def image_classifier(
    name: str,
    recipe: Recipe,
    build: Callable[[], nn.Module],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    start: Callable[[], nn.Module] | None = None,
    student: Callable[[float], nn.Module] | None = None,
    student_epochs: int | None = None,
    finetune_steps: int = 200,
    finetune_lr: float | None = None,
) -> Workload:
    """A classifier built by `build` and trained (or fine-tuned) here on Fashion-MNIST per
    `recipe`, then benchmarked as `classifier` does.

    `prepare` turns uint8 (N, 28, 28) images into the model's input batch; `start` builds the
    model training starts from (pretrained weights, say), only when there is no cached one.
    `student(width)` builds the architecture `student@w` distils into, trained from scratch
    for `student_epochs` (the recipe's epochs unless given) at the recipe's learning rate.
    The recovery (`+ft`, `+kd`) trains `finetune_steps` at `finetune_lr`, the recipe's own
    learning rate unless given (at a quarter of it, MobileNetV2's prune_channels@0.5 recovered
    1.4 points less in 3,000 steps); neither is the reference's, so changing them retrains none.
    """
    data = fashion_mnist.load()
    batch_loss = _loss(prepare, data.train_images, data.train_labels)

    def fit() -> nn.Module:
        return training.train((start or build)(), batch_loss, len(data.train_labels),
                              epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                              seed=recipe.seed, desc=f"train {name}")

    state, path = cached_state_dict(name, recipe, fit)
    model = build()
    model.load_state_dict(state)
    finetune_lr = finetune_lr or recipe.lr
    return classifier(name, model, test=(data.test_images, data.test_labels),
                      train=(data.train_images, data.train_labels), prepare=prepare,
                      batch_size=recipe.batch_size, finetune_lr=finetune_lr,
                      finetune_steps=finetune_steps, seed=recipe.seed,
                      student=student, student_epochs=student_epochs or recipe.epochs,
                      student_lr=recipe.lr,
                      definition="Fashion-MNIST t10k: all 10,000 test images and labels",
                      notes={"checkpoint": str(path), "recipe": recipe.__dict__,
                             "recovery": {"steps": finetune_steps, "lr": finetune_lr}})


Data = tuple[torch.Tensor, torch.Tensor] | Dataset


def classifier(
    name: str,
    model: nn.Module,
    *,
    test: Data,
    train: Data,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    batch_size: int = 64,
    finetune_lr: float = 5e-4,
    finetune_steps: int = 200,
    seed: int = 0,
    student: Callable[[float], nn.Module] | None = None,
    student_epochs: int = 1,
    student_lr: float = 3e-3,
    definition: str = "",
    notes: dict | None = None,
) -> Workload:
    """A Workload for a trained image classifier (a torchvision model, say): top-1 in % on
    `test`, calibration and the recovery fine-tune (`+ft`: cross-entropy, AdamW) from `train`.

    `test` and `train` are (images, labels) tensors or datasets of (image, label) pairs, as
    torchvision's are with a `transform` that makes tensors; `prepare` turns a batch of their
    images into the model's input (normalization, say). The test set is fingerprinted in the
    baselines: hand it over as stored (uint8 images where they are), so another machine's
    float preprocessing cannot change the fingerprint. `student(width)` builds a narrower model
    of the same kind, untrained, for `student@w`: trained from scratch with the reference as
    teacher for `student_epochs` at `student_lr` (AdamW, one cycle). A recovery that names no
    length (`+ft`) is one pass over `train`, at most `finetune_steps`; `+ft@1500` is 1,500
    steps, over `train` as often as they take.
    """
    test_images, test_labels = _tensors(test, "test")
    train_images, train_labels = _tensors(train, "train")
    model.eval()

    def evaluate(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        correct, device = [], model_device(candidate)
        with torch.inference_mode():
            for start in range(0, len(test_labels), EVAL_BATCH):
                x = prepare(test_images[start:start + EVAL_BATCH]).to(device, input_dtype)
                pred = candidate(x).argmax(dim=1).cpu()
                correct.append(pred == test_labels[start:start + EVAL_BATCH])
        per_sample = 100.0 * torch.cat(correct).float()
        return Score(per_sample.mean().item(), per_sample)

    def recovery(teacher: nn.Module | None, what: str) -> Callable[..., None]:
        batch_loss = _loss(prepare, train_images, train_labels, teacher)

        def train(candidate: nn.Module, steps: int | None = None) -> None:
            training.train(candidate, batch_loss, len(train_labels),
                           epochs=None if steps else 1, batch_size=batch_size, lr=finetune_lr,
                           seed=seed + 1, max_steps=steps or finetune_steps,
                           desc=f"{what} {name}")
        return train

    def teach(candidate: nn.Module) -> None:
        training.train(candidate, _loss(prepare, train_images, train_labels, model),
                       len(train_labels), epochs=student_epochs, batch_size=batch_size,
                       lr=student_lr, seed=seed + 2, desc=f"distill {name} into a student")

    # Calibration comes from the training split, never the test split it is scored on.
    calib_idx = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(7))
    calibration = [prepare(train_images[i])
                   for i in calib_idx[:CALIBRATION_BATCHES * CALIBRATION_BATCH]
                   .split(CALIBRATION_BATCH)]
    return Workload(
        name=name,
        metric=TOP1,
        model=model,
        evaluate=evaluate,
        calibration=calibration,
        example_input=prepare(test_images[:TIMING_BATCH]),
        finetune=recovery(None, "fine-tune"),
        distill=recovery(model, "distill into"),
        student=student,
        teach=teach if student else None,
        checkpoint_sha256=state_sha256(model.state_dict()),
        evaluation=evaluation(definition or f"{len(test_labels)} test images and labels",
                              len(test_labels), test_images, test_labels),
        floor=chance_top1(test_labels),
        notes=notes or {},
    )


def _loss(prepare: Callable, images: torch.Tensor, labels: torch.Tensor,
          teacher: nn.Module | None = None) -> Callable:
    """Cross-entropy of a batch of training items; with a teacher, distilled from its logits."""
    def batch_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        device = model_device(model)
        x = prepare(images[idx]).to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, labels[idx].to(device))
        if teacher is None:
            return loss
        with torch.no_grad():
            target = teacher(x)
        return training.distillation_loss(loss, logits, target)

    return batch_loss


def _tensors(data: Data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a pair of tensors or of a dataset of (image, label) pairs."""
    if isinstance(data, tuple):
        images, labels = data
    else:
        pairs = [data[i] for i in range(len(data))]
        if not pairs or not isinstance(pairs[0][0], torch.Tensor):
            raise TypeError(f"classifier: the {what} dataset must yield (tensor, label) pairs; "
                            "give it a transform that makes tensors (torchvision's "
                            "transforms.PILToTensor() keeps uint8)")
        images = torch.stack([image for image, _ in pairs])
        labels = torch.tensor([int(label) for _, label in pairs])
    if len(images) != len(labels) or not len(labels):
        raise ValueError(f"classifier: {len(images)} {what} images but {len(labels)} labels")
    return images, labels.long()
