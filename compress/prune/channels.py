"""Structured pruning: physically remove the lowest-L1 channels with Torch-Pruning's DepGraph."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from compress.base import Compressed, Context, Unsupported
from compress.batchnorm import reestimate_batchnorm
from compress.prune.magnitude import Sparsity
from compress.registry import register


class SplitC2f(nn.Module):
    """ultralytics' C2f block with its first conv as two convs, one per half of its channels.

    C2f runs one conv and `chunk`s its output in two; Torch-Pruning's DepGraph cannot follow the
    chunk (IndexError). Two convs compute the same two halves with nothing to split, as
    Torch-Pruning's own YOLOv8 example does (its C2f_v2).
    """

    def __init__(self, c2f: nn.Module):
        super().__init__()
        # ultralytics' attributes (`f` and `i` route the model's forward, `type`, `np`, `c`).
        self.__dict__.update({k: v for k, v in vars(c2f).items() if not k.startswith("_")})
        width = c2f.cv1.conv.out_channels
        self.cv0 = _out_channels(c2f.cv1, range(width // 2))
        self.cv1 = _out_channels(c2f.cv1, range(width // 2, width))
        self.cv2, self.m = c2f.cv2, c2f.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _out_channels(block: nn.Module, keep: range) -> nn.Module:
    """A copy of an ultralytics Conv (conv, BatchNorm unless fused, activation) that computes
    only the output channels `keep`."""
    block = copy.deepcopy(block)
    drop = [i for i in range(block.conv.out_channels) if i not in keep]
    tp.prune_conv_out_channels(block.conv, drop)
    if hasattr(block, "bn"):
        tp.prune_batchnorm_out_channels(block.bn, drop)
    return block


def split_c2f(model: nn.Module) -> None:
    """Replace, in place, every ultralytics C2f block (or subclass with C2f's forward) by an
    equivalent SplitC2f. A model without ultralytics loaded has none: nothing is imported."""
    block = sys.modules.get("ultralytics.nn.modules.block")
    if block is None:
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, block.C2f) and type(child).forward is block.C2f.forward:
                setattr(parent, name, SplitC2f(child))


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers the model's prediction comes out of: pruning their outputs would
    change what the model predicts, so they keep them.

    Found by walking one forward pass's autograd graph back from the prediction (the first
    output tensor) and stopping at each Conv/Linear reached. A classifier's is its last Linear;
    YOLOv8's are the last conv of each box and class branch of its Detect head, plus the DFL
    conv. That conv is frozen (a fixed integral over box bins), so it is never pruned and the
    walk looks through it to the box convs feeding it. Only the first output counts: YOLO's second
    holds its head's input maps too, for its loss, which reads their shapes, not their channels.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    made_by = {}  # autograd node -> the layer whose output it made

    def remember(layer: nn.Module, _, out: torch.Tensor) -> None:
        made_by[out.grad_fn] = layer

    hooks = [m.register_forward_hook(remember) for m in layers]
    try:
        with torch.enable_grad():
            out = model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    while isinstance(out, tuple | list):
        out = out[0]
    found, todo, seen = [], [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        layer = made_by.get(node)
        if layer is not None:
            found.append(layer)
            if not _frozen(layer):
                continue
        todo.extend(parent for parent, _ in node.next_functions)
    if not found:
        raise Unsupported("prune_channels: the model's output comes from no Conv2d or Linear")
    return found


def _frozen(module: nn.Module) -> bool:
    return any(not p.requires_grad for p in module.parameters(recurse=False))


@register("prune_channels", Sparsity, family="pruning", real_on=("cpu", "cuda"), example="0.5")
def prune_channels(config: Sparsity) -> Callable[[nn.Module, Context], Compressed]:
    sparsity = config.sparsity

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        if ctx.example_input is None:
            raise Unsupported("prune_channels needs Context.example_input to trace the graph")
        example = ctx.example_input[:1]
        split_c2f(model)
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=sparsity,
            ignored_layers=output_layers(model, example),
        )
        # A group cuts channels from every layer coupled to them: skip any that would cut a frozen
        # weight (set as it must be, as YOLO's DFL is), whether its inputs or its outputs.
        for group in pruner.step(interactive=True):
            if not any(_frozen(dep.target.module) for dep, _ in group):
                group.prune()
        reestimate_batchnorm(model, ctx.calibration)
        return Compressed(model, "real")

    transform.__doc__ = (
        f"Remove {sparsity:.0%} of the channels of every prunable layer group (lowest L1 norm "
        "first), so the model really has fewer weights and FLOPs; the layers the prediction comes "
        "out of keep their outputs and frozen weights stay whole. ultralytics C2f blocks are first "
        "rewritten as an equivalent with no chunk, which the dependency graph cannot follow. "
        "BatchNorm statistics are then re-estimated."
    )
    return transform
