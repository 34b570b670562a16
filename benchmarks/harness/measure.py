"""Measurement: artifact size on disk, weight counts, memory, and interleaved latency."""

from __future__ import annotations

import gzip
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import zstandard
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from benchmarks.threads import threads


def _tensors(value) -> Iterator[torch.Tensor]:
    """Every tensor in a state_dict value; quantized Linear layers store a (weight, bias) tuple."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)


@dataclass(frozen=True)
class _Stored:
    """One weight of a state_dict: the tensors holding it, and how many weights it stands for."""

    data: list[torch.Tensor]  # plain tensors as stored (inner tensors of a torchao subclass)
    params: int  # logical weights (0 for quantization metadata: scales, codebooks)
    nonzeros: int


# bitsandbytes stores these beside a low-bit weight: scales and codebooks, not weights.
_QUANT_METADATA = ("absmax", "quant_map", "quant_state", "SCB", "weight_format", "nested_")


def _inner(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a wrapper tensor subclass (torchao's quantized weights) is made of."""
    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [leaf for name in names for leaf in _inner(getattr(t, name))]


def _stored(model: nn.Module) -> list[_Stored]:
    """The weights, biases and norms of the state_dict, as stored.

    Not int64 buffers (position ids, counters) and not 0-d tensors (a quantized layer's output
    scale). A bitsandbytes 4-bit weight is a packed uint8 blob that stands for the layer's
    in x out weights; its scales are counted in memory, not as weights.
    """
    logical = {f"{name}.weight": math.prod(m.weight.quant_state.shape)
               for name, m in model.named_modules()
               if getattr(getattr(m, "weight", None), "quant_state", None) is not None}
    # A module that stores its weights packed says what each entry stands for (a palette, or
    # other metadata: 0 weights; compress.sharing's packed indices: the layer's weights).
    logical |= {f"{name}.{key}".lstrip("."): count for name, m in model.named_modules()
                if hasattr(m, "logical_weights") for key, count in m.logical_weights().items()}
    out, seen = [], set()
    for key, value in model.state_dict().items():
        for t in _tensors(value):
            if t.dim() == 0 or t.dtype in (torch.int64, torch.int32, torch.bool):
                continue
            if not is_traceable_wrapper_subclass(t) and not t.is_quantized:
                if (t.data_ptr(), t.dtype, t.shape) in seen:  # a tied weight, stored once
                    continue
                seen.add((t.data_ptr(), t.dtype, t.shape))
            metadata = any(part in key for part in _QUANT_METADATA) or logical.get(key) == 0
            if t.is_quantized:
                t = t.int_repr()
            elif not (t.is_floating_point() or t.dtype in (torch.int8, torch.uint8)):
                continue
            data = _inner(t)
            params = 0 if metadata else logical.get(key, t.numel())
            if metadata or key in logical:
                nonzeros = params
            else:  # a subclass counts the zeros of its integer data, which has its shape;
                # data packed into another shape (two int4 a byte) stores every weight
                same = [d for d in data if d.shape == t.shape]
                nonzeros = int(torch.count_nonzero(same[0])) if same else params
            out.append(_Stored(data, params, nonzeros))
    return out


@dataclass(frozen=True)
class Size:
    """The artifact as saved (torch.save of the state_dict) and what is in it."""

    size_bytes: int
    gzip_bytes: int
    zstd_bytes: int
    params: int
    nonzeros: int
    memory_bytes: int  # in-memory bytes of those tensors

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.size_bytes / self.params


def artifact_size(model: nn.Module) -> Size:
    """Write the model the way it is shipped (its state_dict, torch.save; or the file it was
    exported to) and measure the file.

    gzip and zstd sizes show what sparsity saves in storage without pretending the dense
    tensors are smaller than they are. At their fast levels (gzip 1, zstd's default 3): on
    SmolLM2's 538 MB fp32 state_dict gzip 6 and zstd 10 took 79 s together and gained 3-10 %
    of ratio over these (16 s).
    """
    artifact = getattr(model, "artifact", None)  # an exported model ships its own file
    if artifact is not None:  # (its runtime says what the file holds: compress StoredTensor)
        path = Path(artifact)  # a file, or a folder of them (OpenVINO's graph and weights)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        data = b"".join(f.read_bytes() for f in files)
        counts = [(t.params, t.nonzeros, t.nbytes) for t in model.stored]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(model.state_dict(), path)
            data = path.read_bytes()
        counts = [(w.params, w.nonzeros, sum(d.numel() * d.element_size() for d in w.data))
                  for w in _stored(model)]
    params, nonzeros, memory = (sum(column) for column in zip(*counts, strict=True)) \
        if counts else (0, 0, 0)
    return Size(
        size_bytes=len(data),
        gzip_bytes=len(gzip.compress(data, compresslevel=1, mtime=0)),
        zstd_bytes=len(zstandard.ZstdCompressor(level=3).compress(data)),
        params=params,
        nonzeros=nonzeros,
        memory_bytes=memory,
    )


def copy_bandwidth_gbps(n_threads: int, mib: int = 512, repeats: int = 7) -> float:
    """The memory bandwidth one copy on `n_threads` threads reaches, in GB/s as STREAM counts
    it (bytes read + bytes written, write-allocate traffic not counted), over buffers 16x a
    32 MB last-level cache, best of `repeats`: the rate at which a decode that reads every weight
    once per token can stream them, its roofline."""
    n = mib * 2**20 // 4
    source, target = torch.ones(n), torch.zeros(n)  # written once: their pages are in memory
    best = math.inf
    with threads(n_threads):
        for _ in range(repeats):
            start = time.perf_counter()
            target.copy_(source)
            best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best / 1e9


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


@dataclass(frozen=True)
class Timing:
    """Latency of reference and compressed, taken in alternating rounds in one process."""

    reference_ms: list[float]
    compressed_ms: list[float]
    threads: int
    # CUDA only: one call of each bracketed by torch.cuda.synchronize itself, outside the
    # timing loop, so a loop that stopped waiting for the GPU shows (selfcheck).
    settled_ms: tuple[float, float] | None = None

    def __post_init__(self):
        if not self.reference_ms or len(self.reference_ms) != len(self.compressed_ms):
            raise ValueError("a timing needs the same, non-zero number of rounds for both models")

    @property
    def ratios(self) -> list[float]:
        return [r / c for r, c in zip(self.reference_ms, self.compressed_ms, strict=True)]

    @property
    def speedup(self) -> float:
        """Median of the per-round ratios: robust to a round disturbed by another process."""
        return statistics.median(self.ratios)

    @property
    def speedup_iqr(self) -> tuple[float, float]:
        if len(self.ratios) < 2:
            return (self.speedup, self.speedup)
        q = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return (q[0], q[2])


def interleaved_latency(
    reference: Callable[[], object],
    compressed: Callable[[], object],
    *,
    device: str = "cpu",
    n_threads: int = 1,
    warmup: int = 2,
    min_rounds: int = 9,
    max_rounds: int = 31,
    budget_s: float = 3.0,
) -> Timing:
    """Time both callables alternately, swapping which goes first each round.

    Alternation puts both under the same machine load, so their ratio is steadier than
    either absolute time; rounds stop at `max_rounds` or once `budget_s` is spent (but never
    before `min_rounds`).
    """
    sync = _sync(device)

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1e3

    ref_ms: list[float] = []
    comp_ms: list[float] = []
    with threads(n_threads), torch.inference_mode():
        for _ in range(warmup):
            timed(reference)
            timed(compressed)
        began = time.perf_counter()
        while len(ref_ms) < max_rounds:
            if len(ref_ms) % 2 == 0:
                ref_ms.append(timed(reference))
                comp_ms.append(timed(compressed))
            else:
                comp_ms.append(timed(compressed))
                ref_ms.append(timed(reference))
            if len(ref_ms) >= min_rounds and time.perf_counter() - began > budget_s:
                break
        settled = None
        if device.startswith("cuda"):
            settled = (_settled_ms(reference), _settled_ms(compressed))
    return Timing(ref_ms, comp_ms, n_threads, settled)


def _settled_ms(fn: Callable[[], object], calls: int = 3) -> float:
    """One call bracketed by synchronize, the median of a few: a single call can be held up
    by the host (on an H100, one took 13.4 ms against timed rounds of 3.3 ms)."""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_batch_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak bytes the allocator holds during one call of `fn`, beyond what it held before.

    That is the activations and workspaces of one batch; the weights, already resident, are
    not in it. On CUDA from the allocator's peak counter; on CPU by replaying the profiler's
    allocation and free events of torch's CPU allocator (buffers a backend allocates outside
    it, such as oneDNN scratchpads, are not seen).
    """
    with torch.inference_mode():
        fn()  # one-time weight packing (fbgemm, oneDNN) is not a per-batch cost
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    activity = torch.profiler.ProfilerActivity.CPU
    with torch.inference_mode(), torch.profiler.profile(activities=[activity],
                                                        profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # + on the allocating op, - on "[memory]" frees
        peak = max(peak, live)
    return peak
