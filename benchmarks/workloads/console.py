"""What a workload says while it loads, and its progress bars (stderr: CI logs keep them)."""

from __future__ import annotations

import os
import sys
import time

from torch import nn
from tqdm import tqdm


def say(workload: str, message: str) -> None:
    """A progress line of a workload's loading, on stderr (CI logs keep it)."""
    print(f"[{workload}] {message}", file=sys.stderr, flush=True)


def say_loaded(workload: str, model: nn.Module, since: float) -> None:
    """Say how big the model that took `time.perf_counter() - since` seconds to load is."""
    say(workload, f"loaded {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters "
                  f"in {time.perf_counter() - since:.0f} s")


def progress(iterable, **kwargs):
    """A progress bar on an interactive terminal or when asked for; quiet in CI logs."""
    quiet = os.environ.get("CI") and not os.environ.get("COMPRESS_BENCH_PROGRESS")
    return tqdm(iterable, disable=bool(quiet), file=sys.stderr, dynamic_ncols=True, **kwargs)
