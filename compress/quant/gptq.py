"""GPTQ (Frantar et al., 2023) onto torchao's int4 CPU kernel: `gptq@g`.

Each Linear's columns are rounded one at a time to the int4 grid of their group (`g` inputs
share a scale and zero point, chosen when the walk reaches the group), and the rounding error
of each column is spread over the columns not yet rounded through the inverse of H = X Xᵀ of
the layer's calibration inputs, so the layer's output on those inputs moves least. Layers
are taken transformer block by block, each block calibrated on the outputs of the blocks
already quantized (compress/calibration.py).

torchao's own GPTQ (torchao.prototype.gptq) packs int4 with a CUDA library (mslk), so the
algorithm is written here and its integers are packed as torchao's int4 CPU layout (the
tinygemm grid: q in 0..15, w = (q - 8) * scale + zero, bf16 scale and zero) that
`int4_bf16@g` runs (aten::_weight_int4pack_mm_for_cpu, bf16 activations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.calibration import blocks, input_statistics, inverse_hessian
from compress.quant.weight_only import INT4_KERNEL, Int4CpuGroup, check_groups, int4_values
from compress.registry import register

BLOCK = 128  # columns whose errors are applied to the rest together (the paper's lazy batch)
LEVELS, MID = 15, 8  # the tinygemm int4 grid


@register("gptq", Int4CpuGroup, family="quantization", real_on=("cpu",), keeps={"grid"},
          kernel=INT4_KERNEL, example="64")
def gptq(config: Int4CpuGroup) -> Callable[[nn.Module, Context], Compressed]:
    group = config.group

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.device != "cpu":
            raise Unsupported("gptq: packed for torchao's int4 CPU kernel, measured on the CPU")
        batches = list(ctx.calibration)
        if not batches:
            raise Unsupported("gptq calibrates on Context.calibration, which is empty")
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not layers:
            raise Unsupported("gptq: the model has no nn.Linear layer")
        check_groups(f"gptq@{group}", model, group)
        packed, tokens = {}, 0
        for block in blocks(model, layers):
            stats = input_statistics(model, block, batches, outer=True)
            for layer in block:
                tokens, xxt = stats[layer]
                levels, scale, zero = quantize(layer.weight.detach().float(), xxt / tokens,
                                               group)
                packed[layer] = levels, scale, zero
                # A new tensor, not in place: an LM head tied to the token embedding is
                # quantized for its matmul and the embedding keeps its float copy for lookups.
                layer.weight = nn.Parameter(int4_values(levels, scale, zero)
                                            .to(layer.weight.dtype), requires_grad=False)
        model = model.to(torch.bfloat16)
        for layer, (levels, scale, zero) in packed.items():
            layer.weight = nn.Parameter(_int4_cpu_tensor(levels, scale, zero, group),
                                        requires_grad=False)
        return Compressed(model, "real", input_dtype=torch.bfloat16,
                          extras={"calibration_tokens": tokens})

    transform.__doc__ = (f"GPTQ int4 (groups of {group}): columns rounded in order, each one's "
                         "error compensated through the inverse Hessian of held-out inputs; "
                         "torchao's int4 CPU kernel, bf16 activations.")
    return transform


def grid(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tinygemm grid of each row of a group of columns: (scale, zero), bf16 as stored."""
    low, high = weights.amin(dim=1), weights.amax(dim=1)
    scale = ((high - low).clamp_min(1e-6) / LEVELS).bfloat16().float()
    zero = (low + scale * MID).bfloat16().float()
    return scale, zero


def round_to(column: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The levels 0..15 of a column on its rows' grids."""
    return ((column - zero) / scale + MID).round().clamp(0, LEVELS)


def quantize(weight: torch.Tensor, xxt: torch.Tensor, group: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of one weight matrix (rows x columns) given X Xᵀ of its inputs: its levels, and the
    scale and zero point of each (row, group)."""
    w, h_inv = inverse_hessian(weight, xxt)
    rows, columns = w.shape
    levels = torch.zeros_like(w)
    scale = torch.zeros(rows, columns // group)
    zero = torch.zeros(rows, columns // group)
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        block, inv = w[:, start:end].clone(), h_inv[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            column = start + i
            g = column // group
            if column % group == 0:  # the group's grid, from its weights as updated so far
                scale[:, g], zero[:, g] = grid(block[:, i:i + group])  # (BLOCK % group == 0)
            levels[:, column] = round_to(block[:, i], scale[:, g], zero[:, g])
            rounded = (levels[:, column] - MID) * scale[:, g] + zero[:, g]
            error = (block[:, i] - rounded) / inv[i, i]
            block[:, i:] -= error.unsqueeze(1) @ inv[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return levels, scale, zero


def _int4_cpu_tensor(levels: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int):
    """The levels packed as torchao's Int4OpaqueTensor, as its from_hp packs its own."""
    from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
    from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.to(torch.int32), 1)
    scale_and_zero = pack_tinygemm_scales_and_zeros(scale.bfloat16(), zero.bfloat16(),
                                                    torch.bfloat16)
    return Int4OpaqueTensor(qdata=packed, scale_and_zero=scale_and_zero,
                            block_size=[1, group], shape=levels.shape, act_pre_scale=None)
