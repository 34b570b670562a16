"""The workload contract, the reference-model cache, and the shared training loop."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.harness.measure import threads

TIERS = ("pr", "full")
# The study's four model families; each is a pytest mark on its cells (`-m language`).
FAMILIES = ("classification", "detection", "language", "generative")


@dataclass(frozen=True)
class Score:
    """A task metric and the per-sample outcomes it was computed from (for paired tests).

    `per_sample` holds each test sample's contribution, so that `value` is their mean (top-1
    in %: 100 for a right answer, 0 for a wrong one), or the metric's SUMMARY of their mean
    (perplexity: exp of the mean per-window token loss).
    """

    value: float
    per_sample: torch.Tensor
    # Other numbers of the task, reported beside the metric and not gated (each corpus's
    # perplexity, cosine similarity of embeddings to the reference's).
    extras: dict[str, float] = field(default_factory=dict)
    # For a metric that is no function of a per-sample mean (mAP over images): the metric on
    # each row of an index matrix (rows, n) of samples, for the paired bootstrap. `per_sample`
    # then holds one number per sample for the self-checks (detection: true positives).
    resample: Callable[[torch.Tensor], torch.Tensor] | None = None
    # How far each sample's prediction moved from the reference model's (language models: the
    # KL divergence of the next-token distributions, nats): gated beside the metric as `kld`,
    # since a metric can hold while the predictions change.
    kld: torch.Tensor | None = None


# A metric is the mean of its per-sample values, or the function listed here of that mean.
SUMMARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"perplexity": torch.exp}


@dataclass(frozen=True)
class Probe:
    """A second timed task beside the timing batch, timed interleaved the same way."""

    # Given a model, the call to time (e.g. greedy generation of a fixed number of tokens).
    call: Callable[[nn.Module], Callable[[], object]]
    items: int  # what one call produces, for a throughput (e.g. 32 tokens)
    unit: str  # of those items, e.g. "tok"
    # Each item reads every weight once (an LLM decoding a token): its rate is bounded by the
    # memory bandwidth over the weights' bytes, and the cell reports how close it comes.
    streams_weights: bool = False


@dataclass(frozen=True)
class Evaluation:
    """What a workload scores every model on, pinned in its baselines: numbers blessed on other
    samples, labels or windows mean nothing here, however close they come."""

    definition: str  # in words: the split, the windows, how many of what
    samples: int  # paired samples of the metric (images, windows, articles, tiles)
    fingerprint: str  # of the evaluated inputs and labels, as they are before preprocessing


def evaluation(definition: str, samples: int, *data) -> Evaluation:
    """An Evaluation whose fingerprint hashes `data`: tensors, arrays (dtype, shape and bytes),
    strings, numbers, or lists of them. Hash integer data (uint8 images, token ids, labels),
    which every machine reads alike, not float preprocessing of it."""
    digest = hashlib.sha256()
    for item in data:
        _digest(digest, item)
    return Evaluation(definition, samples, digest.hexdigest()[:16])


def _digest(digest, item) -> None:
    if isinstance(item, list | tuple):
        digest.update(f"[{len(item)}".encode())
        for part in item:
            _digest(digest, part)
        return
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().contiguous().numpy()
    if isinstance(item, np.ndarray):
        item = np.ascontiguousarray(item)
        digest.update(f"{item.dtype.str}{item.shape}".encode())
        digest.update(item.tobytes())
        return
    if not isinstance(item, str | int | float | bytes):
        raise TypeError(f"cannot fingerprint a {type(item).__name__}")
    digest.update(item if isinstance(item, bytes) else repr(item).encode())


@dataclass(frozen=True)
class Floor:
    """What the metric is for a model that has learned nothing of the task (chance top-1, a
    unigram model's perplexity): a compressed model at its floor has collapsed, and its cell
    no longer shows what the technique does. Only for a metric on which the reference stands
    clear of it."""

    value: float
    what: str


def chance_top1(labels: torch.Tensor) -> Floor:
    """Top-1 in % of always answering the most common of `labels`."""
    return Floor(100 * torch.bincount(labels).max().item() / len(labels),
                 "chance: always the most common label")


@dataclass
class Workload:
    """A reference model, its data and metric, and what a technique may need from it."""

    name: str
    metric: str  # e.g. "top1_pct"
    higher_is_better: bool
    model: nn.Module
    evaluate: Callable[[nn.Module, torch.dtype], Score]
    calibration: list[torch.Tensor]
    example_input: torch.Tensor  # the batch that is timed (images, or token ids)
    finetune: Callable[[nn.Module], None] | None
    checkpoint_sha256: str
    evaluation: Evaluation
    floor: Floor | None = None
    # About the reference and its data (source, recipe, context numbers): in every record of
    # the workload and under its heading in the report.
    notes: dict = field(default_factory=dict)
    # What the timing batch is and holds, for a throughput: ("prefill", 128, "tok").
    timed_items: tuple[str, int, str] | None = None
    # Further timed tasks, each gated like the speedup as `<name>_speedup`.
    probes: dict[str, Probe] = field(default_factory=dict)
    # The file the reference was loaded from, for runtimes that need what it holds beside the
    # weights (llama.cpp: a GGUF file's tokenizer and metadata).
    source_file: Path | None = None
    # One output of a model as an (H, W, 3) uint8 image, shown in the report beside the
    # reference's (a generator's upscaled photo: what a PSNR drop looks like).
    picture: Callable[[nn.Module, torch.dtype], np.ndarray] | None = None


def cache_dir() -> Path:
    """Where trained reference models live: $COMPRESS_BENCH_CACHE or ~/.cache/compress-bench."""
    root = os.environ.get("COMPRESS_BENCH_CACHE") or Path.home() / ".cache" / "compress-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# Bump when train() or cached_state_dict() change what a recipe produces: old caches retrain.
TRAINER_VERSION = 3
# Training runs on a fixed number of threads: float reductions split across threads add up in
# another order, so a recipe gives the same bytes only on the same thread count (and ISA).
TRAIN_THREADS = 2
# ... and on the AVX2 instruction set even where the CPU has more (AVX512, AMX): kernels for
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
    code = f"from benchmarks.workloads import WORKLOADS; WORKLOADS[{name!r}].load()"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO)
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"[{name}] training the reference model failed (exit code "
                           f"{done.returncode}); its output is above")


def say(workload: str, message: str) -> None:
    """A progress line of a workload's loading, on stderr (CI logs keep it)."""
    print(f"[{workload}] {message}", file=sys.stderr, flush=True)


def say_loaded(workload: str, model: nn.Module, since: float) -> None:
    """Say how big the model that took `time.perf_counter() - since` seconds to load is."""
    say(workload, f"loaded {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters "
                  f"in {time.perf_counter() - since:.0f} s")


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first tensor lives (CPU for a model with none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def batched_outputs(model: nn.Module, x: torch.Tensor, batch_size: int,
                    input_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The model's output for `x`, run `batch_size` items at a time on the model's device, in
    `input_dtype`; returned in float32 on the CPU (of a tuple or list, the first element)."""
    device, out = model_device(model), []
    with torch.inference_mode():
        for batch in x.split(batch_size):
            y = model(batch.to(device, input_dtype))
            out.append((y[0] if isinstance(y, tuple | list) else y).float().cpu())
    return torch.cat(out)


@contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels on CUDA, where cuDNN's autotuner and atomic adds otherwise make two
    runs of one fine-tune differ (on an H100, MobileNetV2 prune_global@0.8+ft moved 3.8 points
    between two runs). A kernel with no deterministic version warns. CPU training is left as
    it is: it is deterministic already, and the cached references were trained that way."""
    if device.type != "cuda":
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def progress(iterable, **kwargs):
    """A progress bar on an interactive terminal or when asked for; quiet in CI logs."""
    quiet = os.environ.get("CI") and not os.environ.get("COMPRESS_BENCH_PROGRESS")
    return tqdm(iterable, disable=bool(quiet), file=sys.stderr, dynamic_ncols=True, **kwargs)


def train(
    model: nn.Module,
    batch_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    n_items: int,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    epochs: int | None = None,
    max_steps: int | None = None,
    weight_decay: float = 1e-4,
) -> nn.Module:
    """AdamW on the parameters that require grad, one-cycle schedule; seeded, so a rerun trains
    the same model.

    `batch_loss(model, indices)` is the loss of one batch of the training items; `max_steps`
    cuts training short (a recovery fine-tune is a few hundred steps of the same loop). Without
    `epochs`, as many as `max_steps` full batches take.
    """
    if epochs is None:
        if max_steps is None or n_items < batch_size:
            raise ValueError(f"{desc}: give epochs, or max_steps and at least one full batch "
                             f"({n_items} items, batch {batch_size})")
        epochs = -(-max_steps // (n_items // batch_size))
    torch.manual_seed(seed)  # dropout and anything else that draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    plan = [idx for _ in range(epochs) for idx in torch.randperm(n_items, generator=gen)
            .split(batch_size) if len(idx) == batch_size][:max_steps]
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter only
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(plan))
    model.train()
    bar = progress(plan, desc=desc, unit="step")
    with threads(TRAIN_THREADS), deterministic(model_device(model)):
        for idx in bar:
            loss = batch_loss(model, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()
