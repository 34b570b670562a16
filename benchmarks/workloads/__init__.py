"""The workloads: one module each (NAME, FAMILY, CELLS scope, load()), registered here."""

from __future__ import annotations

from types import ModuleType

from benchmarks.workloads import (
    craft_text,
    esrgan_animevideov3,
    esrgan_x4plus,
    fmnist_cnn,
    fmnist_det_yolov8n,
    fmnist_mobilenetv2,
    fmnist_vae,
    minilm_l6,
    smollm2_135m,
)
from benchmarks.workloads.base import TIERS, Workload

WORKLOADS: dict[str, ModuleType] = {
    m.NAME: m for m in (fmnist_cnn, fmnist_mobilenetv2, smollm2_135m, minilm_l6,
                       fmnist_det_yolov8n, craft_text,
                       esrgan_animevideov3, esrgan_x4plus, fmnist_vae)}


def cells(family: str) -> list[tuple[str, str, str]]:
    """(workload, technique, tier) of every cell of a family, in scope order."""
    out = []
    for name, module in WORKLOADS.items():
        if module.FAMILY == family:  # noqa: SIM300 (FAMILY is a module attribute)
            for technique, tier in module.CELLS.items():
                if tier not in TIERS:
                    raise ValueError(f"{name}: cell {technique} has unknown tier {tier!r}")
                out.append((name, technique, tier))
    return out


__all__ = ["WORKLOADS", "Workload", "cells"]
