"""Self-checks of the benchmark: inject each classic benchmarking fault, see the cell fail.

The cells run through the real harness (`run_cell`, `judge`) on a small model with synthetic
data, so each test shows the fault is caught where `nox -s bench` would catch it.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import compress
from benchmarks.harness import cell as cell_module
from benchmarks.harness import measure
from benchmarks.harness.cell import measure_reference, run_cell
from benchmarks.harness.measure import interleaved_latency
from benchmarks.harness.selfcheck import output_problems, timing_problems
from benchmarks.harness.verdict import baseline_entry, judge
from benchmarks.workloads.base import TOP1, Score, Workload, evaluation


def small_workload(evaluate=None) -> Workload:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    x, y = torch.randn(512, 64), torch.randint(10, (512,))

    def top1(candidate: nn.Module, input_dtype: torch.dtype = torch.float32) -> Score:
        with torch.inference_mode():
            per_sample = 100.0 * (candidate(x.to(input_dtype)).argmax(1) == y).float()
        return Score(per_sample.mean().item(), per_sample)

    return Workload(name="small", metric=TOP1, model=model,
                    evaluate=evaluate or top1, calibration=[x[:128]], example_input=x[:64],
                    finetune=lambda m: None, checkpoint_sha256="test",
                    evaluation=evaluation("random images", len(y), x, y))


def cell_checks(workload: Workload, technique: str) -> list:
    record, _ = run_cell(workload, measure_reference(workload, "cpu"), technique,
                         device="cpu", n_threads=1)
    return judge(record, baseline_entry(record), speed_gated=True)


def failures(checks) -> list[str]:
    return [c.message for c in checks if c.failed]


def test_a_healthy_cell_passes_every_self_check():
    checks = cell_checks(small_workload(), "int8_dynamic")
    assert not [c for c in checks if c.metric == "self_check"]


def test_zero_samples_fail():
    def empty(candidate, input_dtype=torch.float32):
        return Score(math.nan, torch.empty(0))

    messages = failures(cell_checks(small_workload(empty), "int8_dynamic"))
    assert any("self-check failed: reference model was scored on zero samples" in m
               for m in messages)
    assert any("accuracy_drop is nan" in m for m in messages)


def test_nan_scores_fail():
    def broken(candidate, input_dtype=torch.float32):
        per_sample = torch.full((512,), math.nan)
        return Score(per_sample.mean().item(), per_sample)

    messages = failures(cell_checks(small_workload(broken), "int8_dynamic"))
    assert any("non-finite per-sample scores" in m for m in messages)


class FakeClock:
    """Time that passes only when a fake model spends it.

    The timing self-checks compare rounds with each other; with real sleeps a busy CI machine
    made a steady 1 ms call look cold, so these tests run the real timing loop on this clock.
    """

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, ms: float):
        self.now += ms / 1e3


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(measure, "time", fake)
    return fake


def lazy_model(clock: FakeClock, first_call_ms: float = 40.0, steady_ms: float = 1.0):
    """A model whose first call pays a one-time setup cost (like lazy init or weight packing)."""
    calls = []

    def forward():
        clock.spend(first_call_ms if not calls else steady_ms)
        calls.append(1)

    return forward


def test_timing_without_warmup_is_caught(clock):
    steady = functools.partial(clock.spend, 1.0)
    timing = interleaved_latency(steady, lazy_model(clock), warmup=0, min_rounds=5, max_rounds=5)
    [problem] = timing_problems(timing)
    assert problem.startswith("compressed: the first timed round took 40 ms")
    assert "warm the model up" in problem
    warmed = interleaved_latency(steady, lazy_model(clock), min_rounds=5, max_rounds=5)
    assert timing_problems(warmed) == []


def test_a_first_round_slower_by_less_than_a_preemption_is_not_setup(clock):
    """A 0.08 ms model whose first timed round took 0.2 ms: the process was preempted, or a
    page faulted; that cannot be told from setup, and it moves no median."""
    steady = functools.partial(clock.spend, 0.08)
    timing = interleaved_latency(steady, lazy_model(clock, first_call_ms=0.2, steady_ms=0.08),
                                 warmup=0, min_rounds=5, max_rounds=5)
    assert timing_problems(timing) == []


class FakeGPU:
    """Kernels run asynchronously: a launch returns at once, synchronize waits for them."""

    LAUNCH_MS = 0.01

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.busy_until = 0.0

    def launch(self, ms: float):
        self.clock.spend(self.LAUNCH_MS)
        self.busy_until = max(self.busy_until, self.clock.now) + ms / 1e3

    def synchronize(self):
        self.clock.now = max(self.clock.now, self.busy_until)


def test_gpu_timing_without_synchronisation_is_caught(monkeypatch, clock):
    gpu = FakeGPU(clock)
    monkeypatch.setattr(torch.cuda, "synchronize", gpu.synchronize)
    reference, compressed = (lambda: gpu.launch(4.0)), (lambda: gpu.launch(2.0))

    synced = interleaved_latency(reference, compressed, device="cuda", min_rounds=5,
                                 max_rounds=5)
    assert timing_problems(synced) == []
    assert 1.9 < synced.speedup < 2.1

    # The fault: a timer that stops the clock when the kernels are queued.
    monkeypatch.setattr(measure, "_sync", lambda device: (lambda: None))
    unsynced = interleaved_latency(reference, compressed, device="cuda", min_rounds=5,
                                   max_rounds=5)
    problems = timing_problems(unsynced)
    assert len(problems) == 2
    assert all("torch.cuda.synchronize missing" in p for p in problems)


def test_a_simulated_technique_that_claims_a_speedup_fails(monkeypatch):
    """A 'simulated' technique that quietly swaps in a smaller model is measured faster."""

    def shrink(model, ctx):
        small = nn.Sequential(nn.Linear(64, 10)).eval()
        return compress.Compressed(small, "simulated", why_simulated="masks, no sparse kernel")

    monkeypatch.setitem(compress.registry.REGISTRY, "fake_mask",
                        compress.Registration("fake_mask", "pruning", shrink))
    checks = cell_checks(small_workload(), "fake_mask")
    [speed] = [c for c in checks if c.metric == "speedup"]
    assert speed.failed
    assert "a simulated technique (masks, no sparse kernel) measured" in speed.message
    assert "declare execution='real'" in speed.message


def test_an_honest_simulated_technique_is_reported_not_failed():
    checks = cell_checks(small_workload(), "prune_l1@0.5")
    [speed] = [c for c in checks if c.metric == "speedup"]
    assert speed.status == "reported"


def test_timing_a_model_other_than_the_evaluated_one_is_caught(monkeypatch):
    # The fault: the timer is handed the reference model for both sides.
    real = cell_module.timed_calls
    monkeypatch.setattr(cell_module, "timed_calls",
                        lambda ref, model, x_ref, x_comp: real(ref, ref, x_ref, x_ref))
    messages = failures(cell_checks(small_workload(), "int8_dynamic"))
    assert any("timed model's output differs from the evaluated model's" in m
               for m in messages)


def test_output_check_reads_nested_outputs():
    a = {"logits": torch.ones(2, 3), "aux": (torch.zeros(2),)}
    assert "returns 2 outputs" in output_problems(a, torch.ones(2, 3))[0]
    assert output_problems(a, {"logits": torch.ones(2, 3), "aux": (torch.zeros(2),)}) == []
    b = {"logits": torch.ones(2, 3) * 1.01, "aux": (torch.zeros(2),)}
    assert "differs" in output_problems(a, b)[0]


@pytest.mark.parametrize("rounds", [[1.0, 1.1, 0.9], [2.5, 1.1, 1.3]])
def test_an_ordinary_first_round_is_not_called_cold(rounds):
    timing = measure.Timing(rounds, rounds, 1)
    assert timing_problems(timing) == []


def test_a_real_technique_that_silently_runs_float_fails_its_kernel_check(monkeypatch):
    """The fault: a technique registered with int8_dynamic's claim and kernel (real,
    quantized::linear_dynamic) whose layers quietly stay float."""

    def float_fallback(model, ctx):
        return compress.Compressed(model, "real")

    monkeypatch.setitem(compress.registry.REGISTRY, "fake_int8", compress.Registration(
        "fake_int8", "quantization", float_fallback, real_on=("cpu",),
        kernel=r"^quantized::linear_dynamic$"))
    record, _ = run_cell(small_workload(), measure_reference(small_workload(), "cpu"),
                         "fake_int8", device="cpu", n_threads=1)
    assert record.kernels == {}
    [problem] = [p for p in record.self_check_problems if "low-bit" in p]
    assert "no operator matching '^quantized::linear_dynamic$' ran" in problem
    assert "aten::" in problem  # what ran instead is named
    checks = judge(record, baseline_entry(record), speed_gated=True)
    assert any("silent fallback to float" in m for m in failures(checks))


def test_a_real_low_bit_cell_records_the_kernel_that_ran():
    record, _ = run_cell(small_workload(), measure_reference(small_workload(), "cpu"),
                         "int8_dynamic", device="cpu", n_threads=1)
    assert record.kernels == {"quantized::linear_dynamic": 2}  # its two Linear layers
    assert not record.self_check_problems


def test_a_technique_with_nothing_to_prove_records_no_kernel():
    record, _ = run_cell(small_workload(), measure_reference(small_workload(), "cpu"),
                         "prune_channels@0.5", device="cpu", n_threads=1)
    assert record.kernels == {} and not record.self_check_problems
