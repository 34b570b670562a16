"""The workloads: one module each (NAME, FAMILY, CELLS scope, load()), registered here.

A user's own workloads live outside the repository: `--workloads my_llm.py` (a file or a
dotted module name) makes the matrix those workloads, and a package's
`compress_bench.workloads` entry points add theirs to it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
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


CONTRACT = ("NAME", "FAMILY", "CELLS", "load")  # what a workload module defines
ENTRY_POINTS = "compress_bench.workloads"


def use(specs: list[str]) -> None:
    """Make the matrix exactly these workloads: each a module file (`my_llm.py`), a dotted
    module name, or the name of a workload already registered (`smollm2-135m`)."""
    chosen = {}
    for spec in specs:
        module = WORKLOADS.get(spec) or _import(spec)
        chosen[module.NAME] = module
    WORKLOADS.clear()
    WORKLOADS.update(chosen)


def register(module: ModuleType, origin: str) -> ModuleType:
    """Check that a module keeps the workload contract, and add it to the matrix."""
    missing = [name for name in CONTRACT if not hasattr(module, name)]
    if missing:
        raise ValueError(f"{origin}: a workload module defines {', '.join(CONTRACT)}; this one "
                         f"lacks {', '.join(missing)} (see benchmarks/workloads/smollm2_135m.py)")
    if module.NAME in WORKLOADS and WORKLOADS[module.NAME] is not module:
        raise ValueError(f"{origin}: a workload named {module.NAME!r} is already registered; "
                         "give yours another NAME (it names its baselines file too)")
    WORKLOADS[module.NAME] = module
    return module


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        if not path.is_file():
            raise ValueError(f"--workloads {spec}: no such file (paths are relative to the "
                             "folder pytest runs in: the repository's, under nox)")
        name = f"compress_bench_workload_{path.stem}"
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module  # so that pytest-xdist workers and pickle find it
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as err:
            raise ValueError(f"--workloads {spec}: neither a registered workload ("
                             f"{', '.join(WORKLOADS)}), a .py file nor an importable module: "
                             f"{err}") from None
    return register(module, spec)


def _installed() -> None:
    """The workloads installed packages declare under the `compress_bench.workloads` entry
    point group (each entry point a workload module)."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        register(entry.load(), f"entry point {entry.name} ({entry.value})")


_installed()


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
            key = compress.canonical(technique)
            if key in seen:
                raise ValueError(f"{name}: cells {seen[key]!r} and {technique!r} are the same "
                                 "technique; keep one")
            seen[key] = technique
            out.append(Cell(name, module.FAMILY, technique, tier))
    return out


__all__ = ["WORKLOADS", "Cell", "Workload", "cells", "register", "use"]
