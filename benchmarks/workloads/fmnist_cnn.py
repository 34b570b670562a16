"""fmnist-cnn: a small two-conv CNN (0.42 M params) trained here on Fashion-MNIST."""

from __future__ import annotations

from torch import nn

from benchmarks.workloads.base import Workload
from benchmarks.workloads.classification import Recipe, image_classifier
from benchmarks.workloads.fashion_mnist import normalize

NAME = "fmnist-cnn"
FAMILY = "classification"
# The scope: technique -> tier ("pr" runs on every pull request, "full" nightly).
CELLS = {
    "int8_dynamic": "pr",
    "int8_static": "pr",
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    "fp16": "pr",
    "bf16": "pr",
    "prune_l1@0.5": "pr",
    "prune_l1@0.8": "full",
    "prune_l1@0.9": "pr",
    "prune_global@0.5": "pr",
    "prune_global@0.8": "full",
    "prune_global@0.9": "pr",
    "prune_channels@0.3": "full",
    "prune_channels@0.5": "pr",
    "prune_channels@0.7": "full",
    "svd@0.9": "pr",
    "svd@0.95": "full",
    # OpenVINO, the runtime Intel CPUs deploy on: fp32 IR, and NNCF's int8.
    "openvino": "full",
    "openvino_int8": "full",
    "prune_global@0.9+ft": "pr",
    "prune_channels@0.5+ft": "pr",
    **{f"prune_l1@{s}+ft": "full" for s in (0.5, 0.8, 0.9)},
    **{f"prune_global@{s}+ft": "full" for s in (0.5, 0.8)},
    **{f"prune_channels@{s}+ft": "full" for s in (0.3, 0.7)},
    # Distillation from the reference beside the labels, against the plain fine-tune above.
    "prune_channels@0.5+kd": "full",
    "prune_global@0.9+kd": "full",
    # Weight sharing: palettes of 16 or 256 values, packed indices; +ft trains the palettes.
    "kmeans@16": "full",
    "kmeans@16,per=channel": "full",
    "kmeans@256": "full",
    "kmeans@16+ft": "full",
    # Converged recoveries: 2,000 steps (4.3 passes; the reference trained 936). prune_l1@0.9
    # lost 5.8 points after the 200 steps of +ft, 1.7 after 1,000, 0.7 after 2,000.
    "prune_l1@0.9+ft@2000": "full",
    "prune_channels@0.7+ft@2000": "full",
    # Distillation into a student of a fifth of the parameters (channels x 0.45), and it int8.
    "student@0.45": "full",
    "student@0.45+int8_static": "full",
}
RECIPE = Recipe(arch="cnn2-32-64-128", init="scratch", epochs=2, batch_size=128, lr=3e-3)


def build(width: float = 1.0) -> nn.Module:
    """The reference's architecture; at `width` < 1 every hidden layer has that fraction of
    its channels (the students of `student@w`)."""
    c1, c2, hidden = (max(1, round(n * width)) for n in (32, 64, 128))
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(hidden, 10),
    )


def load() -> Workload:
    # A student trains twice the reference's epochs: at 2, student@0.45 lost 1.7 points.
    return image_classifier(NAME, RECIPE, build, normalize, student=build, student_epochs=4)
