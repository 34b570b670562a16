"""What a search may try on a workload: pipelines of the techniques its scope already runs,
at any setting.

A recipe is `structure[+recovery][+value...]`: a structure stage changes which weights exist
(pruning, low-rank, a distilled student), a recovery trains what is left, and a value chain
changes how the weights are stored (quantization, sharing, a runtime export). Which techniques
a workload takes is read from its scope (the workload module's CELLS): a technique it never
runs is not searched on it, so a trial never discovers that FX cannot trace YOLO. Each
parameter is searched over the range declared below by its name, the same for every technique
that has it; a parameter with no range keeps the value of the scope's cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import compress
from compress.registry import REGISTRY

# Parameter name -> the values a search tries (a float range as (low, high, step)).
RANGES: dict[str, tuple | list] = {
    "sparsity": (0.1, 0.8, 0.05),
    "energy": (0.80, 0.99, 0.01),
    "width": (0.3, 0.8, 0.05),
    "alpha": (0.3, 0.8, 0.1),
    "group": [32, 64, 128],
    "block": [32, 64, 128],
    "clusters": [16, 32, 64, 256],
    "per": ["tensor", "channel"],
    "float": (0, 4, 1),  # layers kept in float by mixed precision (int8_static)
}
STRUCTURE_FAMILIES = ("pruning", "low-rank", "distillation")
# Not a compression: an adapter beside the weights only adds bytes (it is a recovery, +lora).
NOT_SEARCHED = ("lora",)
NONE = "none"


@dataclass(frozen=True)
class Space:
    """A workload's searchable stages: base names of structure stages, the recoveries the
    workload can train, and value chains (tuples of base names, `("gptq", "gguf_q4_1")`)."""

    structures: tuple[str, ...]
    recoveries: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    fixed: dict[str, dict[str, object]]  # base -> a parameter with no range, as the scope has it

    @classmethod
    def of(cls, cells: Iterable[str], *, device: str = "cpu", recoveries: Iterable[str] = (),
           student: bool = False, only: Iterable[str] = ()) -> Space:
        """The space of a scope (technique names) on `device`: `recoveries` the workload can
        train (`ft`, `kd`; the lengths of them its cells name join them, `kd@1500`), `student`
        whether it declares a student architecture, `only` the base names to keep (all when
        empty). A structure stage that would run simulated here (masks, 2:4 without its
        kernel) saves neither bytes nor time here, so it is left out."""
        structures, values, fixed, recoveries = [], [], {}, list(recoveries)
        only = set(only)
        unknown = only - set(REGISTRY)
        if unknown:
            raise ValueError(f"--only {', '.join(sorted(unknown))}: no such technique; known: "
                             f"{', '.join(sorted(REGISTRY))}")
        for name in cells:
            stages = name.split("+")
            chain = []
            for stage in stages:
                base = stage.partition("@")[0]
                entry = REGISTRY.get(base)
                if entry is None and base in recoveries and stage not in recoveries:
                    recoveries.append(stage)  # a length the scope trains for: `kd@1500`
                if entry is None or base in NOT_SEARCHED or (only and base not in only):
                    chain = None  # a recovery, or a chain with a stage not searched
                    break
                config = entry.parse(stage, name)
                if config is not None:
                    fixed.setdefault(base, {}).update(
                        {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                         if f.name not in RANGES})
                if entry.family in STRUCTURE_FAMILIES:
                    if (base not in structures and base != "student"
                            and device.partition(":")[0] in entry.real_on):
                        structures.append(base)
                else:
                    chain.append(base)
            if chain and tuple(chain) not in values:
                values.append(tuple(chain))
        if student and (not only or "student" in only):
            structures.append("student")
        if not structures and not values:
            raise ValueError("nothing to search: no technique of the workload's scope is left"
                             + (f" by --only {', '.join(sorted(only))}" if only else ""))
        return cls(tuple(structures), tuple(recoveries), tuple(values), fixed)

    def suggest(self, trial) -> str:
        """The recipe an Optuna trial chooses (define-by-run: a stage's parameters are asked
        only when the stage is chosen)."""
        stages = []
        structure = trial.suggest_categorical("structure", [NONE, *self.structures])
        if structure != NONE:
            stages.append(self._stage(trial, structure))
            # A student is trained from scratch already; a recovery after it is a second one.
            if self.recoveries and structure != "student":
                recovery = trial.suggest_categorical("recovery", [NONE, *self.recoveries])
                if recovery != NONE:
                    stages.append(recovery)
        chains = [NONE, *("+".join(chain) for chain in self.values)]
        chain = trial.suggest_categorical("value", chains)
        if chain != NONE:
            stages += [self._stage(trial, base) for base in chain.split("+")]
        if not stages:  # the reference itself is no recipe: the space's first stage instead
            stages.append(self._stage(trial, self.values[0][0] if self.values
                                      else self.structures[0]))
        return compress.canonical("+".join(stages))

    def _stage(self, trial, base: str) -> str:
        entry = REGISTRY[base]
        if entry.config is None:
            return base
        values = {}
        for field in dataclasses.fields(entry.config):
            choices = RANGES.get(field.name)
            key = f"{base}.{field.name}"
            if isinstance(choices, list):
                values[field.name] = trial.suggest_categorical(key, choices)
            elif isinstance(choices, tuple):
                low, high, step = choices
                suggest = trial.suggest_int if isinstance(step, int) else trial.suggest_float
                values[field.name] = round(suggest(key, low, high, step=step), 4)
            elif field.name in self.fixed.get(base, {}):
                values[field.name] = self.fixed[base][field.name]
        return entry.canonical(entry.config(**values))

    def params(self, recipe: str) -> dict[str, object] | None:
        """The trial parameters that make `suggest` choose `recipe` (a scope's cell, to start
        a search from), or None when the recipe is not in this space."""
        structure, recovery, chain, params = NONE, NONE, [], {}
        for stage in recipe.split("+"):
            base = stage.partition("@")[0]
            entry = REGISTRY.get(base)
            if entry is None:
                recovery = stage
                continue
            if entry.family in STRUCTURE_FAMILIES:
                structure = base
            else:
                chain.append(base)
            config = entry.parse(stage, recipe)
            for field in dataclasses.fields(config) if config is not None else ():
                if field.name in RANGES:
                    params[f"{base}.{field.name}"] = getattr(config, field.name)
        value = "+".join(chain) or NONE
        if (structure != NONE and structure not in self.structures
                or recovery != NONE and recovery not in self.recoveries
                or value != NONE and tuple(chain) not in self.values):
            return None
        params.update(structure=structure, value=value)
        if structure not in (NONE, "student") and self.recoveries:
            params["recovery"] = recovery
        return params

    def describe(self) -> str:
        value = ", ".join("+".join(c) for c in self.values) or NONE
        recovery = ", ".join(f"+{r}" for r in self.recoveries) or NONE
        return (f"structure: {', '.join(self.structures) or NONE}; recovery: {recovery}; "
                f"value: {value}")
