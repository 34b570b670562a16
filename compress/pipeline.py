"""Pipelines: `a+b+c`, each stage applied to the model the stage before it made.

A stage after the first is a technique (`gptq@32+gguf_q4_1`: GPTQ's int4 grid written to GGUF
and run by llama.cpp) or a recovery (`prune_l1@0.5+ft`, compress/recover.py). A pipeline
executes as its last stage does and ships the last stage's artifact; the metric after every
earlier stage is reported beside the cell's, when the caller can score it: `before_recovery`
before a recovery, `after_<stage>` after a technique.
"""

from __future__ import annotations

from torch import nn

from compress import recover
from compress.base import Compressed, Context, Technique


def then(first: Technique, second: Technique) -> Technique:
    """`first+second`: `second` compresses the model `first` made."""

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        out = first.transform(model, ctx)
        extras = dict(out.extras)
        if ctx.evaluate is not None:
            extras[f"after_{first.name}"] = ctx.evaluate(out.model.eval(), out.input_dtype)
        last = second.transform(out.model, ctx)
        return Compressed(last.model, last.execution, last.input_dtype, last.why_simulated,
                          extras={**extras, **last.extras})

    transform.__doc__ = f"{first.doc} Then: {second.doc}"
    real_on = tuple(device for device in second.real_on if device in first.real_on)
    return Technique(f"{first.name}+{second.name}", "pipeline", real_on, transform,
                     transform.__doc__, second.kernel, first.keeps | second.keeps)


def with_recovery(technique: Technique, stage: str, name: str) -> Technique:
    """`technique+stage`: the technique, then the recovery `stage` names (`ft`, `kd@1500`,
    compress/recover.py) of its model.

    The result executes as the technique did (a recovery trains weights or adds an adapter;
    it does not change how the technique's layers run).
    """
    recovery, steps = recover.parse(stage, name)

    def transform(model: nn.Module, ctx: Context) -> Compressed:
        trained = recover.trained_for(ctx, recovery, steps, stage)  # before compressing
        out = technique.transform(model, ctx)
        extras = dict(out.extras)
        if ctx.evaluate is not None:
            extras["before_recovery"] = ctx.evaluate(out.model.eval(), out.input_dtype)
        recovered = recovery.run(out.model, trained, technique.keeps)
        return Compressed(recovered.model, out.execution, out.input_dtype, out.why_simulated,
                          extras={**extras, **recovered.extras})

    transform.__doc__ = f"{technique.doc} Then: {recovery.run.__doc__}"
    return Technique(f"{technique.name}+{stage}", "pipeline", technique.real_on, transform,
                     transform.__doc__, technique.kernel, technique.keeps)
