"""Where techniques register themselves, beside their code, with typed parameters.

A technique with parameters declares them as a small frozen dataclass that checks itself (in
the manner of torchao's configs), and registers the factory that makes its transform from one:

    @dataclass(frozen=True)
    class Sparsity:
        sparsity: float

        def __post_init__(self):
            if not 0 <= self.sparsity < 1:
                raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")

    @register("prune_l1", Sparsity, family="pruning", example="0.5")
    def prune_l1(config: Sparsity) -> Transform: ...

A technique without parameters registers its transform itself. The name is the parameters'
serialized form, which baselines and pytest ids use: `base@value` for a required field, then
`key=value` for one with a default, left out when it is the default (`kmeans@16,per=channel`,
`int8_static@float=2`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from torch import nn

from compress.base import FAMILIES, Compressed, Context, Invariant, Technique

Transform = Callable[[nn.Module, Context], Compressed]


@dataclass(frozen=True)
class Registration:
    name: str
    family: str
    # The transform, or, when `config` is set, a factory that makes one from a config.
    make: Callable
    config: type | None = None
    real_on: tuple[str, ...] = ()  # devices where it runs for real
    kernel: str = ""  # the operators that prove a real low-bit execution (compress/kernels.py)
    keeps: frozenset[Invariant] = frozenset()  # what a recovery after it must keep
    example: str = ""  # a valid name, for the docs and the tests that walk the registry

    def technique(self, spec: str, name: str) -> Technique:
        """The technique of one stage `spec` (`base` or `base@values`) of the name `name`."""
        config = self.parse(spec, name)
        transform = self.make if config is None else self.make(config)
        return Technique(spec, self.family, self.real_on, transform, transform.__doc__ or "",
                         self.kernel, self.keeps, config)

    def parse(self, spec: str, name: str) -> Any:
        """The config a stage names (None for a technique without parameters)."""
        _, at, text = spec.partition("@")
        fields = dataclasses.fields(self.config) if self.config else ()
        required = [f for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        if (at and not fields) or (required and not text):
            raise KeyError(f"technique {spec!r} in {name!r} is malformed: write it as "
                           f"{self.form()}")
        if not fields:
            return None
        types = typing.get_type_hints(self.config)
        values: dict[str, Any] = {}
        for i, item in enumerate(text.split(",") if text else ()):
            key, eq, value = item.rpartition("=")
            if not eq:
                key = fields[i].name if i < len(fields) else ""
            if key not in types or key in values:
                raise KeyError(f"technique {spec!r} in {name!r}: {item!r} names no parameter "
                               f"of {self.name} (write it as {self.form()})")
            try:
                values[key] = _value(key, value, types[key])
            except ValueError as err:
                raise KeyError(f"technique {spec!r} in {name!r}: {err}") from None
        try:
            return self.config(**values)
        except (TypeError, ValueError) as err:  # a required field left out; a value refused
            raise KeyError(f"technique {spec!r} in {name!r}: {err}") from None

    def canonical(self, config: Any) -> str:
        """The one spelling of a config: `prune_l1@0.5` for `prune_l1@.50`. A required field is
        written as its value, one with a default as `key=value` and only when it is not the
        default (`kmeans@16,per=channel`, `int8_static@float=2`, `int8_static`)."""
        if config is None:
            return self.name
        parts = [str(value) if f.default is dataclasses.MISSING else f"{f.name}={value}"
                 for f in dataclasses.fields(config)
                 if (value := getattr(config, f.name)) != f.default]
        return f"{self.name}@{','.join(parts)}" if parts else self.name

    def form(self) -> str:
        """How to write its name: `gptq@<group>`, `kmeans@<clusters>[,per=<tensor>]`,
        `int8_static[@float=<0>]` (a dataclass lists its required fields first)."""
        if not self.config:
            return self.name
        fields = dataclasses.fields(self.config)
        required = [f"<{f.name}>" for f in fields if f.default is dataclasses.MISSING]
        optional = [f"{f.name}=<{f.default}>" for f in fields
                    if f.default is not dataclasses.MISSING]
        if required:
            return f"{self.name}@{','.join(required)}" + "".join(f"[,{o}]" for o in optional)
        return f"{self.name}[@{optional[0]}]" + "".join(f"[,{o}]" for o in optional[1:])


REGISTRY: dict[str, Registration] = {}


def register(name: str, config: type | None = None, *, family: str,
             real_on: tuple[str, ...] = (), kernel: str = "",
             keeps: set[Invariant] | frozenset[Invariant] = frozenset(), example: str = ""):
    """Register the decorated transform (or, given `config`, transform factory) as `name`.

    `example` is the parameters of a valid name (`"0.5"` for `prune_l1@0.5`); a registration
    whose example does not parse fails here, at import, not in a benchmark.
    """
    if family not in FAMILIES:
        raise ValueError(f"technique {name}: unknown family {family!r}; known: {FAMILIES}")

    def decorate(make: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name].make is not make:
            raise ValueError(f"two techniques are registered as {name!r}")
        entry = Registration(name, family, make, config, tuple(real_on), kernel,
                             frozenset(keeps), f"{name}@{example}" if example else name)
        entry.parse(entry.example, entry.example)  # KeyError on a bad registration
        REGISTRY[name] = entry
        return make

    return decorate


def _value(key: str, text: str, kind: Any) -> Any:
    """`text` as a value of the field's type: int, float, str or a Literal of choices."""
    if get_origin(kind) is typing.Literal:
        choices = get_args(kind)
        if text not in choices:
            raise ValueError(f"{key} is one of {', '.join(choices)}, got {text!r}")
        return text
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key} must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {text!r}") from None
    return text
