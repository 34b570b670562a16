"""The reference-model cache: a workload's trained reference, built once per recipe (in a child
process with the instruction set capped, so every machine trains the same bytes), checked by
its hash, shared between processes under a lock."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn


def cache_dir() -> Path:
    """Where trained reference models live: $COMPRESS_BENCH_CACHE or ~/.cache/compress-bench."""
    root = os.environ.get("COMPRESS_BENCH_CACHE") or Path.home() / ".cache" / "compress-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# Bump when train() or cached_state_dict() change what a recipe produces: old caches retrain.
TRAINER_VERSION = 3
# Training runs on the AVX2 instruction set even where the CPU has more (AVX512, AMX): kernels for
# wider vectors add up floats in another order too, so a recipe would give other weights on
# another machine and every cell's accuracy would move with them. Capped, a Zen 4 (AVX512)
# trains the byte-identical fmnist-cnn checkpoint a Zen 3 (AVX2) does. torch reads the caps
# when it loads, so a reference is trained in a child process.
ISA_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
_TRAINING = "COMPRESS_BENCH_TRAINING"  # set in that child: the checkpoint it is to write
REPO = Path(__file__).resolve().parents[2]


def recipe_key(recipe) -> str:
    """A short hash of everything that determines a trained model: recipe, trainer, torch."""
    payload = json.dumps({"recipe": asdict(recipe), "trainer": TRAINER_VERSION,
                          "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves: names, dtypes, shapes and bytes. Not of the file, whose
    bytes also hold the archive's name (torch.save names it after the file)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(state[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cached_state_dict(name: str, recipe, build: Callable[[], nn.Module]) -> tuple[dict, Path]:
    """The state_dict that `build()` trains for `recipe`, trained once and cached by its hash.

    `name` must be the registered workload whose load() calls this: on x86 the training runs
    in a child process that loads that workload with the ISA capped (ISA_CAPS).
    """
    path = cache_dir() / f"{name}-{recipe_key(recipe)}.pt"
    if os.environ.get(_TRAINING) == str(path):  # the child (its parent holds the lock)
        _train_and_save(name, recipe, build, path)
        return torch.load(path, map_location="cpu", weights_only=True), path
    # Sharded runs (pytest-xdist workers) may want the same model at once: one trains, the
    # others wait for its checkpoint.
    with path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load_verified(name, path)
        if state is None:
            if platform.machine().lower() in ("x86_64", "amd64"):
                _train_in_capped_child(name, path)
            else:
                _train_and_save(name, recipe, build, path)
            state = _load_verified(name, path)
            if state is None:
                raise RuntimeError(f"[{name}] the reference model just trained into {path} "
                                   "fails its own check (above): is the disk full or failing?")
        return state, path


def _sidecar(path: Path) -> Path:
    """Where a checkpoint's sha256 is recorded when it is written (`sha256sum -c` reads it)."""
    return path.with_name(f"{path.name}.sha256")


def _load_verified(name: str, path: Path) -> dict | None:
    """The cached checkpoint, if its bytes are those recorded when it was written and it loads.

    None when there is none, or when it is corrupt (a disk error, a copy cut short, an edit):
    then it is moved aside to `<file>.corrupt`, never deleted, and stderr says why. A checkpoint
    cached before the sidecars existed is trusted if it loads, and gets its sidecar.
    """
    if not path.exists():
        return None
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = _sidecar(path)
    recorded = sidecar.read_text().split()[:1] if sidecar.exists() else None
    if recorded is not None and recorded != [digest]:
        was = f"{recorded[0][:16]}..." if recorded else "nothing"
        problem = (f"its sha256 is {digest[:16]}..., but {sidecar.name} recorded {was} when it "
                   "was written")
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated zip, a bad pickle...: torch names no file
            first = (str(err).splitlines() or [""])[0].split(". ")[0]  # torch's advice follows
            problem = f"torch.load fails: {type(err).__name__}: {first}"
        else:
            if recorded is None:
                _record_sha256(path, digest)
            return state
    corrupt = path.with_name(f"{path.name}.corrupt")
    for n in range(2, 1000):  # keep every earlier corrupt copy
        if not corrupt.exists():
            break
        corrupt = path.with_name(f"{path.name}.corrupt{n}")
    for src, dst in ((path, corrupt), (sidecar, _sidecar(corrupt))):
        try:
            if src.exists():
                src.replace(dst)
        except OSError as err:
            raise RuntimeError(f"[{name}] the cached reference model {path} is corrupt "
                               f"({problem}), and {src} cannot be moved aside ({err}): remove "
                               f"{src} and run again") from err
    print(f"[{name}] the cached reference model {path} is corrupt ({problem}): moved it to "
          f"{corrupt.name} and retraining", file=sys.stderr, flush=True)
    return None


def _record_sha256(path: Path, digest: str) -> None:
    sidecar = _sidecar(path)
    tmp = sidecar.with_name(f"{sidecar.name}.tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    tmp.replace(sidecar)  # atomic, like the checkpoint's


def _train_and_save(name: str, recipe, build: Callable[[], nn.Module], path: Path) -> None:
    print(f"\n[{name}] training the reference model (cached at {path})", file=sys.stderr)
    torch.manual_seed(recipe.seed)  # before build(): the initial weights must be seeded
    state = build().state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    _sidecar(path).unlink(missing_ok=True)  # a stale one would condemn the new checkpoint
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written checkpoint
    _record_sha256(path, digest)  # after it: a checkpoint without one is checked by loading


def _train_in_capped_child(name: str, path: Path) -> None:
    env = {**os.environ, **ISA_CAPS, _TRAINING: str(path)}
    from benchmarks.workloads import WORKLOADS

    # The child finds the workload as this process did: a user's module by its file.
    module = WORKLOADS.get(name)
    own = getattr(module, "__file__", None) and not module.__name__.startswith("benchmarks.")
    register = f"workloads.use([{module.__file__!r}]); " if own else ""
    code = (f"from benchmarks import workloads; {register}"
            f"workloads.WORKLOADS[{name!r}].load()")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO)
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"[{name}] training the reference model failed (exit code "
                           f"{done.returncode}); its output is above")
