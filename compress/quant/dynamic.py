"""Dynamic-range int8: int8 weights, activations quantized on the fly per batch."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from compress.base import Compressed, Context, Unsupported
from compress.registry import register


@register("int8_dynamic", family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=r"^quantized::linear_dynamic$")
def int8_dynamic(model: nn.Module, ctx: Context) -> Compressed:
    """int8 weights and dynamically quantized activations for every nn.Linear (fbgemm/x86).

    torch has dynamic int8 kernels for Linear (and RNNs) only: convolutions stay fp32, so a
    convolution-heavy model barely shrinks. That is the real behaviour of this path on torch,
    and the benchmark reports it as measured.
    """
    if ctx.device != "cpu":
        raise Unsupported("int8_dynamic: torch's dynamic int8 kernels run on the CPU only")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise Unsupported("int8_dynamic: the model has no nn.Linear layer to quantize")
    torch.backends.quantized.engine = "x86"
    # quantize_dynamic never swaps the root module itself, so wrap it.
    wrapped = quantize_dynamic(nn.Sequential(model), {nn.Linear}, dtype=torch.qint8)
    return Compressed(wrapped[0], "real")
