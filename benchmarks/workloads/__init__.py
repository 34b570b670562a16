"""The workloads: one module each (NAME, FAMILY, CELLS scope, load()), registered here."""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import compress
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
from benchmarks.workloads.base import FAMILIES, TIERS, Workload

WORKLOADS: dict[str, ModuleType] = {
    m.NAME: m for m in (fmnist_cnn, fmnist_mobilenetv2, smollm2_135m, minilm_l6,
                       fmnist_det_yolov8n, craft_text,
                       esrgan_animevideov3, esrgan_x4plus, fmnist_vae)}


class Cell(NamedTuple):
    workload: str
    family: str
    technique: str
    tier: str


def cells() -> list[Cell]:
    """Every cell of every workload, in scope order, checked before any model loads: each
    technique resolves (compress.get), each tier is known, and no workload names the same
    technique twice (`prune_l1@0.5` and `prune_l1@.50` would be one cell with two baselines)."""
    out = []
    for name, module in WORKLOADS.items():
        if module.FAMILY not in FAMILIES:
            raise ValueError(f"{name}: unknown family {module.FAMILY!r}; known: "
                             f"{', '.join(FAMILIES)}")
        seen: dict[tuple, str] = {}
        for technique, tier in module.CELLS.items():
            if tier not in TIERS:
                raise ValueError(f"{name}: cell {technique} has unknown tier {tier!r}; known: "
                                 f"{', '.join(TIERS)}")
            try:
                compress.get(technique)
            except KeyError as err:
                raise ValueError(f"{name}: cell {technique!r} names no technique: "
                                 f"{err.args[0]}") from None
            key = _canonical(technique)
            if key in seen:
                raise ValueError(f"{name}: cells {seen[key]!r} and {technique!r} are the same "
                                 "technique; keep one")
            seen[key] = technique
            out.append(Cell(name, module.FAMILY, technique, tier))
    return out


def _canonical(technique: str) -> tuple:
    """A technique name with each parameter as its number: `prune_l1@.50` is `prune_l1@0.5`."""
    stages = (stage.partition("@") for stage in technique.split("+"))
    return tuple((base, float(value) if at else None) for base, at, value in stages)


__all__ = ["WORKLOADS", "Cell", "Workload", "cells"]
