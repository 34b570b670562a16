"""Weight-only int8 and int4 of every nn.Linear with torchao (`quantize_(model, config)`).

Activations stay in float; the weights are stored as integers with per-channel (int8) or
per-group (int4) scales and are expanded inside the matmul. On the CPU, torchao's int4 path that
runs (IntxWeightOnlyConfig) keeps each 4-bit value in an int8 byte, so the artifact is int8's
size: the benchmark reports that as measured rather than the 4-bit size it could be packed to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compress.base import Compressed, Context, Unsupported


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as err:
        raise Unsupported("weight-only quantization needs torchao: pip install torchao") from err
    return tq


def _quantize(model: nn.Module, config) -> Compressed:
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise Unsupported("weight-only quantization: the model has no nn.Linear layer")
    _torchao().quantize_(model, config)
    return Compressed(model, "real")


def int8_weight(model: nn.Module, ctx: Context) -> Compressed:
    """int8 weights with one scale per output channel (torchao Int8WeightOnlyConfig)."""
    return _quantize(model, _torchao().Int8WeightOnlyConfig())


def int4_weight(group_size: float) -> Callable[[nn.Module, Context], Compressed]:
    if group_size != int(group_size) or group_size < 1:
        raise ValueError(f"group size must be a positive integer, got {group_size}")
    group = int(group_size)

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        tq = _torchao()
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType

        for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
            if layer.in_features % group:
                raise Unsupported(f"int4_weight@{group}: a Linear has {layer.in_features} "
                                  f"inputs, not a multiple of the group size {group}")
        config = tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                         mapping_type=MappingType.ASYMMETRIC)
        return _quantize(model, config)

    transform.__doc__ = (f"int4 weights, asymmetric, one scale and zero point per {group} inputs "
                         "(torchao IntxWeightOnlyConfig; stored in int8 bytes on the CPU).")
    return transform
