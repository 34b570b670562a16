"""Which operators a compressed model really runs: the proof behind `execution="real"`.

A technique that claims low-bit execution names the operators that prove it (`Technique.kernel`,
a regular expression: `quantized::linear_dynamic`, the ggml types `Q4_K`, the ONNX Runtime node
`MatMulNBits`). `operators(model, x)` lists what one call of the model ran: a runtime's own
account where the model is one (its `operators(x)`: ONNX Runtime's profiler, the ggml tensor
types of a GGUF file), otherwise torch's profiler. `proof(...)` keeps the ones that prove the
claim: none means the low-bit layers silently fell back to float.
"""

from __future__ import annotations

import re
from collections import Counter

import torch
from torch import nn


def operators(model: nn.Module, x: torch.Tensor) -> Counter[str]:
    """Each operator one call `model(x)` ran, with how many times it ran."""
    own = getattr(model, "operators", None)
    return Counter(own(x)) if callable(own) else profiled(lambda: model(x))


def profiled(call) -> Counter[str]:
    """The torch operators `call()` ran (aten::mm, quantized::conv2d, bitsandbytes::...)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return Counter({event.key: event.count for event in prof.key_averages()})


def proof(kernel: str, ran: Counter[str]) -> dict[str, int]:
    """The operators in `ran` that match the technique's `kernel` expression."""
    pattern = re.compile(kernel)
    return {name: count for name, count in sorted(ran.items()) if pattern.search(name)}


def describe(ran: dict[str, int]) -> str:
    """`quantized::linear_dynamic x42, quantized::conv2d x7`: the proof as one line."""
    return ", ".join(f"{name} x{count}" for name, count in ran.items())
