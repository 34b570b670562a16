"""Where a model runs, and its outputs batch by batch there."""

from __future__ import annotations

import torch
from torch import nn


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
