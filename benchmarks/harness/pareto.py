"""Pareto fronts: the points that no other point beats in every objective."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    name: str
    higher_is_better: bool


# A cell's objectives: the task metric lost (in its own unit, already signed so that lower is
# better: Record.accuracy_drop), how many times smaller its artifact is, and how many times
# faster it runs, measured side by side.
ACCURACY_DROP = Objective("accuracy_drop", higher_is_better=False)
SIZE_RATIO = Objective("size_ratio", higher_is_better=True)
SPEEDUP = Objective("speedup", higher_is_better=True)
CELL_OBJECTIVES = (ACCURACY_DROP, SIZE_RATIO, SPEEDUP)


def dominates(a: Mapping[str, float], b: Mapping[str, float],
              objectives: Sequence[Objective]) -> bool:
    """`a` is at least as good as `b` in every objective, and better in one."""
    better = False
    for objective in objectives:
        mine, theirs = a[objective.name], b[objective.name]
        if not objective.higher_is_better:
            mine, theirs = -mine, -theirs
        if mine < theirs:
            return False
        better = better or mine > theirs
    return better


def front(points: Mapping[str, Mapping[str, float]],
          objectives: Sequence[Objective]) -> list[str]:
    """The names of the points no other point dominates, in the order given; equal points
    dominate neither each other, so both stay. A value that is not a number is refused: it
    compares false with everything, so its point would look undominated."""
    for name, point in points.items():
        bad = [o.name for o in objectives if not math.isfinite(point[o.name])]
        if bad:
            raise ValueError(f"point {name}: {', '.join(bad)} is not a finite number")
    return [name for name, point in points.items()
            if not any(dominates(other, point, objectives) for other in points.values())]


def cell_point(values: Mapping[str, float], *, simulated: bool) -> dict[str, float]:
    """A cell's values (Record.gated(), or a baseline's), with its speedup as a front counts it.
    A simulated cell runs no faster kernel and claims no speedup, so its speedup is 1.0 exactly:
    its measured ratio is noise around 1.0, which the cell gate does not gate either, and which
    would otherwise move it on and off the front from run to run."""
    point = dict(values)
    if simulated and SPEEDUP.name in point:
        point[SPEEDUP.name] = 1.0
    return point
