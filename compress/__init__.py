"""compress: model-compression techniques behind one registry, `get(name).apply(model, ctx)`.

A name is `base` or `base@values` (e.g. `int8_static`, `prune_l1@0.5`, `svd@0.9`; the values
are the technique's typed parameters, compress/registry.py), optionally followed by more
stages, each applied to the model the one before made (compress/pipeline.py): a technique
(`gptq@32+gguf_q4_1`) or a recovery: `+ft` (the caller's fine-tune, every zero kept, refused
after a technique that keeps a quantization grid), `+kd` (the same with the reference's
outputs as soft targets), `+lora` (a LoRA adapter trained by that fine-tune) or `+qlora` (the
same beside a frozen quantized model); `+ft@1500` trains for 1,500 steps instead of the
workload's own number.

Every module of this package is imported here, so a technique registers itself by being
written in one (`@register`): there is no list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from compress import recover
from compress.base import Compressed, Context, Technique, Unsupported
from compress.pipeline import then, with_recovery
from compress.recover import RECOVERIES
from compress.registry import REGISTRY, Registration, register

__all__ = ["Compressed", "Context", "Registration", "Technique", "Unsupported", "canonical",
           "get", "names", "register"]

for _module in pkgutil.walk_packages(__path__, f"{__name__}."):
    importlib.import_module(_module.name)


def names() -> list[str]:
    """The base names of every registered technique."""
    return sorted(REGISTRY)


def get(name: str) -> Technique:
    """The technique called `name`, e.g. `int8_static`, `prune_global@0.8+ft`, `bnb_nf4+qlora`,
    `gptq@32+gguf_q4_1`."""
    first, *stages = name.split("+")
    technique = _single(first, name)
    for stage in stages:
        if stage.partition("@")[0] in RECOVERIES:
            technique = with_recovery(technique, stage, name)
        elif stage.partition("@")[0] in REGISTRY:
            technique = then(technique, _single(stage, name))
        else:
            raise KeyError(f"unknown stage '+{stage}' in {name!r}: a stage after the first is a "
                           f"recovery ({', '.join('+' + r for r in RECOVERIES)}) or a technique "
                           f"({', '.join(names())})")
    return technique


def canonical(name: str) -> str:
    """The one spelling of a technique name (`prune_l1@.50+ft` is `prune_l1@0.5+ft`), so two
    spellings of one technique are known for the same cell."""
    get(name)  # KeyError on a name that is not one
    stages = []
    for stage in name.split("+"):
        base = stage.partition("@")[0]
        if base in RECOVERIES:
            steps = recover.parse(stage, name)[1]
            stages.append(base if steps is None else f"{base}@{steps}")
        else:
            entry = REGISTRY[base]
            stages.append(entry.canonical(entry.parse(stage, name)))
    return "+".join(stages)


def _single(spec: str, name: str) -> Technique:
    """One stage of `name`: `base` or `base@values`."""
    entry = REGISTRY.get(spec.partition("@")[0])
    if entry is None:
        raise KeyError(f"unknown technique {spec.partition('@')[0]!r} in {name!r}; known: "
                       f"{', '.join(names())}")
    return entry.technique(spec, name)
