"""Half-precision casts: fp16 and bf16 weights and activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compress.base import Compressed, Context
from compress.registry import register

NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def bf16_real_on() -> tuple[str, ...]:
    """bf16 is fast on CUDA, and on CPUs with native bf16 math (AVX512-BF16 or AMX)."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return ("cpu", "cuda") if native else ("cuda",)


def real_on(dtype: torch.dtype) -> tuple[str, ...]:
    return bf16_real_on() if dtype is torch.bfloat16 else ("cuda",)


def to_dtype(dtype: torch.dtype) -> Callable[[nn.Module, Context], Compressed]:
    short, devices = NAMES[dtype], real_on(dtype)

    def cast(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.device in devices:
            return Compressed(model.to(dtype), "real", input_dtype=dtype)
        why = f"{short} on {ctx.device}: no native {short} math here, torch converts per op"
        return Compressed(model.to(dtype), "simulated", input_dtype=dtype, why_simulated=why)

    cast.__doc__ = f"Cast every weight and activation to {short}; halves the stored size."
    return cast


for _dtype, _name in NAMES.items():
    register(_name, family="quantization", real_on=real_on(_dtype))(to_dtype(_dtype))
