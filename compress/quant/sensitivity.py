"""Per-layer sensitivity to int8: how far the model's outputs move when one layer alone has
its weight and input rounded to int8, on calibration data. Mixed precision keeps the layers
that move them most in float (`int8_static@float=k`), as NNCF's accuracy control and Intel
Neural Compressor's op-wise fallback revert the layers that cost most accuracy.

One layer at a time in the float model, with fake quantization in hooks: a forward pass per
layer and batch, not a quantized model per layer (MobileNetV2: 53 layers in seconds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

QUANTIZED_LAYERS = (nn.Conv2d, nn.Linear)


def fake_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel, as the x86 backend stores weights."""
    scale = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12) / 127
    scale = scale.view(-1, *[1] * (weight.dim() - 1))
    return (weight / scale).round().clamp(-127, 127) * scale


def fake_uint8(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Affine uint8 over [low, high] (the range calibration saw, zero included)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255
    zero = round(-low / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


def _outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [_flat(model(b)) for b in batches]


def _flat(out) -> torch.Tensor:
    """A model's output as one float vector (a tensor, or the tensors of a tuple or dict)."""
    if isinstance(out, torch.Tensor):
        return out.float().flatten()
    parts = out.values() if isinstance(out, dict) else out
    return torch.cat([_flat(p) for p in parts if isinstance(p, torch.Tensor | tuple | list |
                                                              dict)])


def int8_sensitivity(model: nn.Module, batches: Sequence[torch.Tensor]) -> dict[str, float]:
    """Each Conv2d and Linear layer's name -> the squared error its int8 rounding alone causes
    in the model's outputs, relative to the outputs' energy (0: harmless)."""
    if not batches:
        raise ValueError("int8_sensitivity needs calibration batches")
    model.eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)}
    ranges: dict[str, list[float]] = {}

    def observe(name):
        def hook(_, args):
            low, high = ranges.setdefault(name, [float("inf"), float("-inf")])
            ranges[name] = [min(low, args[0].min().item()), max(high, args[0].max().item())]
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in layers.items()]
    reference = _outputs(model, batches)
    for h in handles:
        h.remove()
    energy = sum(float(r.pow(2).sum()) for r in reference) or 1e-12
    sensitivity = {}
    for name, layer in layers.items():
        if name not in ranges:  # never ran on these inputs
            continue
        low, high = ranges[name]
        original = layer.weight.data
        layer.weight.data = fake_int8_weight(original)
        handle = layer.register_forward_pre_hook(
            lambda _, args, low=low, high=high: (fake_uint8(args[0], low, high), *args[1:]))
        try:
            outputs = _outputs(model, batches)
        finally:
            handle.remove()
            layer.weight.data = original
        error = sum(float((o - r).pow(2).sum()) for o, r in zip(outputs, reference, strict=True))
        sensitivity[name] = error / energy
    return sensitivity


def most_sensitive(model: nn.Module, batches: Sequence[torch.Tensor], count: int) -> list[str]:
    """The `count` layers whose int8 rounding moves the outputs most, most sensitive first."""
    if count <= 0:
        return []
    ranked = sorted(int8_sensitivity(model, batches).items(), key=lambda kv: -kv[1])
    return [name for name, _ in ranked[:count]]
