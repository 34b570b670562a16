"""A block run on a fixed intra-op thread count: timing (benchmarks/harness) and training
(benchmarks/workloads) both pin it, each for its own reason."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block with a fixed intra-op thread count, then restore the previous one."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
