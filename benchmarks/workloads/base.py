"""The workload contract: what a workload gives the harness (Workload, Metric, Score, Probe,
Floor, Evaluation) and the names of its tiers and families."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

TIERS = ("pr", "full")
# The study's four model families; each is a pytest mark on its cells (`-m language`).
FAMILIES = ("classification", "detection", "language", "generative")


@dataclass(frozen=True)
class Metric:
    """A gated metric, declared once: the workload holds it, the harness reads it.

    A workload's metric is the mean of its per-sample values (Score.per_sample), or `summary`
    of that mean (perplexity: exp of the mean token loss); one that is no function of a mean
    (mAP over images) resamples itself (Score.resample). The tolerance is how far it may move
    between runs of an unchanged tree on another CPU of one class (float rounding), in its own
    unit, or relative to the blessed value where that is larger.
    """

    name: str  # as baselines and records name it, e.g. "top1_pct"
    unit: str  # of its values, for the report: "%", "nats", "dB", "" (a ratio)
    higher_is_better: bool
    tolerance: float
    relative_tolerance: float = 0.0
    summary: Callable[[torch.Tensor], torch.Tensor] | None = None

    def tolerance_at(self, value: float) -> float:
        return max(self.tolerance, self.relative_tolerance * abs(value))

    def __str__(self) -> str:
        return self.name


TOP1 = Metric("top1_pct", "%", higher_is_better=True, tolerance=0.3)
PERPLEXITY = Metric("perplexity", "", higher_is_better=False, tolerance=0.1, summary=torch.exp)
MAP50_95 = Metric("mAP50-95_pct", "%", higher_is_better=True, tolerance=1.0)
AP50 = Metric("AP50_pct", "%", higher_is_better=True, tolerance=1.0)
PSNR = Metric("psnr_db", "dB", higher_is_better=True, tolerance=0.1)
# 1 nat per image (0.002 bits per pixel, of about 1,900 nats): wider than the paired 95 %
# interval of fmnist-vae's quantization cells (±0.07 to ±0.3 nats).
NEG_ELBO = Metric("neg_elbo_nats", "nats", higher_is_better=False, tolerance=1.0)
# How far a model's predictions moved from the reference's (a language model's next-token KL
# divergence, a fidelity metric: Workload.fidelity). It spans 1e-3 (8-bit) to 1 (broken), so
# its slack is relative, with a floor.
KLD = Metric("kld", "nats", higher_is_better=False, tolerance=0.001, relative_tolerance=0.1)


@dataclass(frozen=True)
class Score:
    """A task metric and the per-sample outcomes it was computed from (for paired tests).

    `per_sample` holds each test sample's contribution, so that `value` is their mean (top-1
    in %: 100 for a right answer, 0 for a wrong one), or the Metric's summary of their mean
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
    # How far each sample's prediction moved from the reference model's, per fidelity metric
    # the workload declares (Workload.fidelity; a language model's next-token KL divergence as
    # "kld"): each is gated beside the task metric, which can hold while predictions change.
    fidelity: dict[str, torch.Tensor] = field(default_factory=dict)


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
    metric: Metric  # e.g. TOP1
    model: nn.Module
    evaluate: Callable[[nn.Module, torch.dtype], Score]
    calibration: list[torch.Tensor]
    example_input: torch.Tensor  # the batch that is timed (images, or token ids)
    # Trains a compressed model in place (`+ft`): `finetune(model, steps=None)`, `steps` the
    # optimizer steps a recipe names (`+ft@1500`), else the workload's own number.
    finetune: Callable[..., None] | None
    checkpoint_sha256: str
    evaluation: Evaluation
    floor: Floor | None = None
    # The fine-tune with the reference's outputs as soft targets beside the task's loss
    # (training.distillation_loss), for `+kd`; None where the workload has none.
    distill: Callable[..., None] | None = None
    # A smaller architecture of the same kind at a width multiplier, untrained, and the
    # training of one from scratch by distillation from the reference, for `student@w`.
    student: Callable[[float], nn.Module] | None = None
    teach: Callable[[nn.Module], None] | None = None
    # Gated beside `metric`: how far a model's predictions moved from the reference's, each the
    # mean of its per-sample values in Score.fidelity (a language model: KLD).
    fidelity: tuple[Metric, ...] = ()
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
