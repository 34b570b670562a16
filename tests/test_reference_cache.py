"""The reference-model cache: trained once per recipe, on capped ISA, identified by its weights."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from benchmarks.workloads import cache, training


@dataclass(frozen=True)
class Recipe:
    seed: int = 0


def test_weight_hash_ignores_the_file_and_sees_every_weight(tmp_path):
    state = nn.Linear(4, 3).state_dict()
    for name in ("a.pt", "b.pt"):  # torch.save names its archive after the file
        torch.save(state, tmp_path / name)
    loaded = [torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt")]
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert cache.state_sha256(loaded[0]) == cache.state_sha256(loaded[1])
    changed = {k: v.clone() for k, v in state.items()}
    changed["bias"][0] = torch.nextafter(changed["bias"][0], torch.tensor(1.0))
    assert cache.state_sha256(changed) != cache.state_sha256(state)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")
def test_training_runs_in_a_child_with_the_isa_capped(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_BENCH_CACHE", str(tmp_path))
    seen = {}

    def child(argv, env, cwd):  # stands in for the child: writes the checkpoint it is asked
        seen.update(argv=argv, env=env)
        torch.save(nn.Linear(2, 2).state_dict(), env[cache._TRAINING])
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(cache.subprocess, "run", child)
    state, path = cache.cached_state_dict("some-workload", Recipe(), build=lambda: 1 / 0)
    assert set(state) == {"weight", "bias"} and path.exists()
    assert all(seen["env"][k] == v for k, v in cache.ISA_CAPS.items())
    assert "WORKLOADS['some-workload'].load()" in seen["argv"][-1]
    # Cached: the second call trains nothing.
    monkeypatch.setattr(cache.subprocess, "run", lambda *a, **k: pytest.fail("retrained"))
    assert cache.cached_state_dict("some-workload", Recipe(), build=lambda: 1 / 0)[1] == path


def test_the_child_trains_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_BENCH_CACHE", str(tmp_path))
    path = tmp_path / f"w-{cache.recipe_key(Recipe())}.pt"
    monkeypatch.setenv(cache._TRAINING, str(path))
    state, got = cache.cached_state_dict("w", Recipe(), build=lambda: nn.Linear(3, 1))
    assert got == path and path.exists() and state["weight"].shape == (1, 3)


def test_training_on_cuda_uses_deterministic_kernels_and_restores_the_settings():
    # No GPU needed: the switch only sets torch's flags. On an H100 two runs of one +ft cell
    # differed by up to 3.8 points without it.
    assert not torch.are_deterministic_algorithms_enabled()
    with training.deterministic(torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    with training.deterministic(torch.device("cpu")):  # CPU training is deterministic already
        assert not torch.are_deterministic_algorithms_enabled()


def test_training_for_max_steps_takes_that_many_steps_from_a_split_with_a_ragged_end():
    # 15 items in batches of 8 give one full batch an epoch: steps, not items, set the epochs
    # (a ceiling of steps x batch / items gave 54 of 100 steps here).
    steps = []
    model = nn.Linear(2, 1)

    def batch_loss(m, idx):
        steps.append(len(idx))
        return m(torch.ones(len(idx), 2)).pow(2).mean()

    training.train(model, batch_loss, 15, batch_size=8, lr=1e-3, seed=0, max_steps=100, desc="t")
    assert steps == [8] * 100
    with pytest.raises(ValueError, match="max_steps"):
        training.train(model, batch_loss, 15, batch_size=8, lr=1e-3, seed=0, desc="t")
