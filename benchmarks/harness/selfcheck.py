"""Self-checks of a measurement: a broken benchmark must fail loudly, not report a number.

Each check looks for the symptom of one classic benchmarking bug in what was measured, not
in the code that measured it, so a harness change that reintroduces the bug is still caught.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch.utils._pytree import tree_leaves

from benchmarks.harness.measure import Timing

# A first timed round this many times slower than every later one is one-time setup (lazy
# init, weight packing, allocator growth) that a warm-up should have absorbed. Against the
# *maximum* of the later rounds, so a single disturbed round elsewhere cannot trigger it.
COLD_FACTOR = 2.0
# ... and this much slower in absolute terms: on sub-millisecond rounds one preemption of the
# process (a scheduler time slice is milliseconds) is indistinguishable from setup.
COLD_EXCESS_MS = 1.0
# Timed rounds this much faster than one call bracketed by the device's own synchronize:
# the timer stopped when the kernels were queued, not when they finished.
UNSYNCED_FACTOR = 0.5
# The timed model's output on the timing batch against the evaluated model's: the same model
# under the same threads gives the same numbers, up to a kernel's nondeterministic reduction.
OUTPUT_RTOL = 1e-4


def score_problems(per_sample: dict[str, torch.Tensor]) -> list[str]:
    problems = []
    for name, outcomes in per_sample.items():
        if outcomes.numel() == 0:
            problems.append(f"{name} model was scored on zero samples: the evaluation data is "
                            "empty or the loop never ran")
        elif not bool(torch.isfinite(outcomes).all()):
            problems.append(f"{name} model has non-finite per-sample scores: the metric is "
                            "broken (NaN outputs or a division by zero)")
    return problems


def timing_problems(timing: Timing) -> list[str]:
    problems = []
    rounds = {"reference": timing.reference_ms, "compressed": timing.compressed_ms}
    for name, times in rounds.items():
        if not all(math.isfinite(t) and t > 0 for t in times):
            problems.append(f"{name} timing has non-finite or non-positive rounds {times}: the "
                            "clock is broken")
            continue
        if len(times) >= 3 and times[0] > COLD_FACTOR * max(times[1:]) \
                and times[0] - max(times[1:]) > COLD_EXCESS_MS:
            problems.append(f"{name}: the first timed round took {times[0]:.3g} ms, over "
                            f"{COLD_FACTOR:g}x every later one (at most {max(times[1:]):.3g} "
                            "ms): one-time setup was timed; warm the model up before timing")
    for name, settled in zip(rounds, timing.settled_ms or (), strict=False):
        median = statistics.median(rounds[name])
        if median < UNSYNCED_FACTOR * settled:
            problems.append(f"{name}: timed rounds (median {median:.3g} ms) are far faster than "
                            f"one synchronised call ({settled:.3g} ms): the timer does not wait "
                            "for the device to finish (torch.cuda.synchronize missing)")
    return problems


def kernel_problems(technique, execution: str, ran: dict[str, int],
                    proof: dict[str, int]) -> list[str]:
    """A technique that runs for real and names its low-bit kernel must have run it: none means
    its layers silently fell back to float (the speedup and the claim belong to nothing)."""
    if execution != "real" or not technique.kernel or proof:
        return []
    busiest = ", ".join(name for name, _ in sorted(ran.items(), key=lambda kv: -kv[1])[:6])
    return [f"{technique.name} claims real low-bit execution, but no operator matching "
            f"{technique.kernel!r} ran (it ran {busiest or 'nothing'}): a silent fallback to "
            "float; fix the technique or declare it simulated"]


def output_problems(timed: object, evaluated: object) -> list[str]:
    """The model that was timed must be the model that was scored.

    Outputs may be tensors or nests of them (tuples, dicts, a transformers ModelOutput).
    """
    timed_leaves, evaluated_leaves = tree_leaves(timed), tree_leaves(evaluated)
    if len(timed_leaves) != len(evaluated_leaves):
        return [f"the timed model returns {len(timed_leaves)} outputs, the evaluated model "
                f"{len(evaluated_leaves)}: the speedup belongs to another model"]
    tensors = [(t, e) for t, e in zip(timed_leaves, evaluated_leaves, strict=True)
               if isinstance(t, torch.Tensor) and isinstance(e, torch.Tensor)]
    for t, e in tensors:
        if problems := _tensor_problems(t, e):
            return problems
    return []


def _tensor_problems(timed: torch.Tensor, evaluated: torch.Tensor) -> list[str]:
    timed, evaluated = timed.float(), evaluated.float()
    if timed.shape != evaluated.shape:
        return [f"the timed model's output has shape {tuple(timed.shape)}, the evaluated "
                f"model's {tuple(evaluated.shape)}: the speedup belongs to another model"]
    scale = float(evaluated.abs().max()) or 1.0
    worst = float((timed - evaluated).abs().max())
    if not worst <= OUTPUT_RTOL * scale:
        return [f"the timed model's output differs from the evaluated model's by up to {worst:.3g}"
                f" (outputs reach {scale:.3g}): the speedup belongs to another model"]
    return []
