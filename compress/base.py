"""The technique contract: what a compression technique takes, returns and promises."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Execution = Literal["real", "simulated"]
# What a recovery fine-tune after a technique must keep of its weights besides their zeros
# (which every recovery keeps): the values weight sharing made (each weight one of a few), a
# quantization grid.
Invariant = Literal["shared", "grid"]
FAMILIES = ("quantization", "pruning", "low-rank", "sharing", "distillation", "export",
            "pipeline")


class Unsupported(RuntimeError):
    """The technique cannot run on this device or model; the message says why."""


@dataclass
class Context:
    """What a technique may need besides the model. All of it is optional."""

    device: str = "cpu"
    # Batches of real inputs for calibration (static quantization) and tracing.
    calibration: Iterable[torch.Tensor] = ()
    # One batch, for tracing dependency graphs (structured pruning) and FX.
    example_input: torch.Tensor | None = None
    # Trains what requires grad in a model, in place, for a short while: the recovery
    # pipelines (`+ft`, `+lora`, `+qlora`) and `lora` use it. A `steps=` keyword, when it takes
    # one, sets how many optimizer steps (`+ft@1500`); without it, the workload's own number.
    finetune: Callable[..., None] | None = None
    # The same fine-tune with the reference model's outputs as soft targets beside the task's
    # loss (knowledge distillation): `+kd` uses it.
    distill: Callable[..., None] | None = None
    # The workload's declared student architecture at a width multiplier (untrained), and the
    # training that teaches a fresh one from scratch with the reference's outputs as soft
    # targets, as long as the reference was trained: `student@w` uses them.
    student: Callable[[float], nn.Module] | None = None
    teach: Callable[[nn.Module], None] | None = None
    # The workload's metric of a model (given its input dtype): a recovery pipeline reports
    # the metric before recovering, beside the one after.
    evaluate: Callable[[nn.Module, torch.dtype], float] | None = None
    # The file the model was loaded from, when a runtime needs what it holds beside the
    # weights (a GGUF file's tokenizer and metadata, for llama.cpp).
    source_file: Path | None = None


@dataclass
class Compressed:
    """A compressed model and how it executes."""

    model: nn.Module
    # `real`: smaller or low-bit kernels really run; `simulated`: masks, casts or fake-quant
    # with no fast kernel on this device, so no speedup may be claimed for it.
    execution: Execution
    # Inputs must be cast to this dtype before the forward pass (fp16/bf16 models).
    input_dtype: torch.dtype = torch.float32
    why_simulated: str = ""
    # Numbers the technique measured about itself, reported beside the cell's metrics (an
    # adapter's bytes, the metric before a recovery fine-tune).
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor inside an exported file: how many weights it holds, how many of them are not
    zero, and the bytes that hold them (packed 4-bit blocks hold two weights a byte)."""

    params: int
    nonzeros: int
    nbytes: int
    dtype: str  # as the file names it: float32, int8, Q4_K

    @classmethod
    def of(cls, t: torch.Tensor) -> StoredTensor:
        return cls(t.numel(), int(torch.count_nonzero(t)), t.numel() * t.element_size(),
                   str(t.dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Technique:
    """A named, parametrized compression technique: `get("prune_l1@0.5").apply(model, ctx)`."""

    name: str
    family: str
    # Devices on which the technique runs for real (elsewhere it is simulated or unsupported).
    real_on: tuple[str, ...]
    transform: Callable[[nn.Module, Context], Compressed] = field(repr=False)
    doc: str = ""
    # A regular expression of the operators whose running proves a real low-bit execution
    # (compress/kernels.py); empty for techniques with nothing of the kind to prove (float
    # exports, pruned or factorized float layers, casts).
    kernel: str = ""
    keeps: frozenset[Invariant] = frozenset()  # what a recovery after it must keep
    config: object = None  # its typed parameters (compress/registry.py), None without any

    def apply(self, model: nn.Module, ctx: Context | None = None) -> Compressed:
        """Compress a copy of `model`; the caller's model is never modified."""
        ctx = ctx or Context()
        model = copy.deepcopy(model).eval()
        out = self.transform(model, ctx)
        out.model.eval()
        return out


def tied_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters that more than one module holds (an LM head tied to the token
    embeddings): changing one in place of a layer would silently untie them."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest |got - want| relative to the largest |want|: how far an output moved."""
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
