"""The search: Optuna trials of recipes (space.py), each measured as a bench cell is, until the
time budget runs out or the best recipe stops improving; then the Pareto front and the best
recipe, written and drawn.

Every trial is a whole cell (benchmarks/harness/cell.py): the compressed model scored on the
workload's full evaluation, its artifact's bytes, and its speed measured interleaved with the
reference. A recipe is scored on the evaluation it is reported on, so a search can overfit
that set by choosing among many recipes (as any tuning on a test set can): bench the recipe
it finds on data of your own before shipping it.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import compress
from benchmarks.harness.cell import measure_reference, run_cell
from benchmarks.harness.pareto import ACCURACY_DROP, SIZE_RATIO, Objective, cell_point
from benchmarks.harness.pareto import front as pareto_front
from benchmarks.search.space import Space
from benchmarks.workloads import WORKLOADS


@dataclass(frozen=True)
class Budget:
    """What a recipe must meet, and what the search may spend on finding one."""

    max_drop: float  # in the metric's units (a relative one already resolved)
    min_speedup: float = 0.0
    max_size_bytes: float = math.inf
    minutes: float = 10.0
    patience: int = 12  # recipes measured without a better best one before the search stops
    max_trials: int | None = None

    def shortfall(self, outcome: Outcome) -> float:
        """How far a recipe misses the budget, each limit relative to itself (0: it meets it)."""
        over_drop = max(0.0, outcome.accuracy_drop - self.max_drop) / max(abs(self.max_drop), 1e-9)
        slow = max(0.0, self.min_speedup - outcome.speedup) / max(self.min_speedup, 1e-9)
        big = max(0.0, outcome.size_bytes - self.max_size_bytes) / self.max_size_bytes \
            if math.isfinite(self.max_size_bytes) else 0.0
        return over_drop + slow + big


@dataclass
class Outcome:
    """One trial: the recipe and what its cell measured (`error`: why it did not run)."""

    number: int
    recipe: str
    seconds: float
    accuracy_drop: float = math.nan
    metric: float = math.nan
    size_ratio: float = math.nan
    size_bytes: float = math.nan
    speedup: float = math.nan  # of the searched speed (`speed`), 1.0 when simulated
    execution: str = ""
    error: str = ""
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return not self.error


# The sampler proposed only recipes measured already this many times in a row: a small space
# is exhausted (a repeat costs nothing, so it does not count against the patience).
EXHAUSTED = 50

# How the best recipe within the budget is chosen among those that meet it.
PREFER: dict[str, Callable[[Outcome], float]] = {
    "size": lambda o: o.size_ratio,
    "speed": lambda o: o.speedup,
    "both": lambda o: math.sqrt(max(o.size_ratio, 0) * max(o.speedup, 0)),
}


@dataclass
class Search:
    workload: str
    budget: Budget
    speed: str = "speedup"  # the gated speedup searched (`decode_speedup` for an LM)
    prefer: str = "both"
    device: str = "cpu"
    threads: int = 1
    only: tuple[str, ...] = ()
    seed: int = 0
    relative_drop: bool = False  # budget.max_drop is a percentage of the reference's metric
    log: Callable[[str], None] = print
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return (ACCURACY_DROP, SIZE_RATIO, Objective(self.speed, higher_is_better=True))

    def best(self) -> tuple[Outcome | None, bool]:
        """The best recipe and whether it meets the budget: the preferred one of those that
        do, else the one that misses it by least (saved all the same, and said so)."""
        measured = [o for o in self.outcomes if o.measured]
        if not measured:
            return None, False
        meeting = [o for o in measured if self.budget.shortfall(o) == 0]
        if meeting:
            return max(meeting, key=PREFER[self.prefer]), True
        closest = min(measured, key=lambda o: (self.budget.shortfall(o), -PREFER[self.prefer](o)))
        return closest, False

    def front(self) -> list[Outcome]:
        measured = {str(o.number): o for o in self.outcomes if o.measured}
        points = {k: {"accuracy_drop": o.accuracy_drop, "size_ratio": o.size_ratio,
                      self.speed: o.speedup} for k, o in measured.items()}
        return sorted((measured[k] for k in pareto_front(points, self.objectives)),
                      key=lambda o: o.accuracy_drop)

    def run(self, out_dir: Path) -> Path:
        """Search until the budget of time or patience is spent; write the results to
        `out_dir` (after every trial, so an interrupted search keeps what it found)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        module = WORKLOADS[self.workload]
        workload = module.load()
        speeds = ["speedup", *(f"{name}_speedup" for name in workload.probes)]
        if self.speed not in speeds:  # before the reference is measured
            raise SystemExit(f"--speed {self.speed}: the {self.workload} cells measure "
                             f"{', '.join(speeds)}")
        reference = measure_reference(workload, self.device)
        if self.relative_drop:
            self.budget = replace(self.budget, max_drop=abs(reference.score.value)
                                  * self.budget.max_drop / 100)
            self.relative_drop = False
        recoveries = tuple(r for r, needs in (("ft", workload.finetune), ("kd", workload.distill))
                           if needs is not None)
        try:
            space = Space.of(module.CELLS, device=self.device, recoveries=recoveries,
                             student=workload.student is not None, only=self.only)
        except ValueError as err:  # nothing left to search: a usage error, said plainly
            raise SystemExit(f"optimize {self.workload}: {err}") from None
        self.log(f"{self.workload}: reference {workload.metric.name} "
                 f"{reference.score.value:.4g}; searching {space.describe()}")
        self.log(f"budget: drop <= {self.budget.max_drop:.4g} {workload.metric.name}"
                 + (f", {self.speed} >= {self.budget.min_speedup:g}x"
                    if self.budget.min_speedup else "")
                 + (f", size <= {self.budget.max_size_bytes / 1e6:.3g} MB"
                    if math.isfinite(self.budget.max_size_bytes) else "")
                 + f"; {self.budget.minutes:g} min, stop after {self.budget.patience} trials "
                   "without a better best recipe")
        out_dir.mkdir(parents=True, exist_ok=True)
        # Multivariate TPE, grouped by the stages a trial chose (a conditional space), told how
        # far each trial missed the budget (Trial.set_constraint).
        sampler = optuna.samplers.TPESampler(seed=self.seed, multivariate=True, group=True,
                                             n_startup_trials=8)
        directions = ["maximize" if o.higher_is_better else "minimize" for o in self.objectives]
        study = optuna.create_study(directions=directions, sampler=sampler)
        for cell, tier in module.CELLS.items():  # the scope's quick cells first: known starts
            params = space.params(cell) if tier == "pr" else None
            if params is not None:
                study.enqueue_trial(params)
        deadline = time.monotonic() + 60 * self.budget.minutes
        tried: dict[str, Outcome] = {}
        stale = repeats = 0

        def objective(trial) -> tuple[float, ...]:
            nonlocal stale, repeats
            recipe = space.suggest(trial)
            if recipe in tried:  # the same recipe again: its measurement stands
                outcome = tried[recipe]
                repeats += 1
            else:
                repeats = 0
                outcome = self._measure(trial.number, recipe, workload, reference)
                tried[recipe] = outcome
                before, _ = self.best()
                self.outcomes.append(outcome)
                stale = 0 if self.best()[0] is not before else stale + 1
                self._report(outcome)
                self.write(out_dir, workload.metric.name, reference.score.value, space)
            if (stale >= self.budget.patience or repeats >= EXHAUSTED
                    or time.monotonic() > deadline):
                study.stop()
            if not outcome.measured:
                raise optuna.TrialPruned(outcome.error)
            trial.set_constraint("shortfall", self.budget.shortfall(outcome))
            return outcome.accuracy_drop, outcome.size_ratio, outcome.speedup

        study.optimize(objective, n_trials=self.budget.max_trials,
                       timeout=60 * self.budget.minutes, catch=())
        path = self.write(out_dir, workload.metric.name, reference.score.value, space)
        self.summary(workload.metric.name)
        return path

    def _measure(self, number: int, recipe: str, workload, reference) -> Outcome:
        start = time.monotonic()
        try:
            record, _ = run_cell(workload, reference, recipe, device=self.device,
                                 n_threads=self.threads)
        except compress.Unsupported as why:
            return Outcome(number, recipe, time.monotonic() - start, error=str(why))
        except Exception as err:  # a pipeline the scope never ran may break: say so, go on
            return Outcome(number, recipe, time.monotonic() - start,
                           error=f"failed: {type(err).__name__}: {str(err)[:300]}")
        gated = record.gated()
        point = cell_point(gated, simulated=record.execution == "simulated")
        problems = record.self_check_problems
        return Outcome(number, recipe, time.monotonic() - start,
                       accuracy_drop=record.accuracy_drop, metric=record.compressed_metric,
                       size_ratio=record.size_ratio,
                       size_bytes=record.compressed_size.size_bytes,
                       speedup=point[self.speed], execution=record.execution,
                       error="; ".join(problems),
                       extras={k: v for k, v in record.extras.items()
                               if isinstance(v, int | float)})

    def _report(self, o: Outcome) -> None:
        if not o.measured:
            self.log(f"  #{o.number:<3} {o.recipe}: not measured: {o.error}")
            return
        meets = "meets the budget" if self.budget.shortfall(o) == 0 else "misses"
        self.log(f"  #{o.number:<3} {o.recipe}: drop {o.accuracy_drop:+.3g}, "
                 f"{o.size_ratio:.2f}x smaller, {o.speedup:.2f}x {self.speed} "
                 f"({o.execution}, {o.seconds:.0f} s): {meets}")

    def write(self, out_dir: Path, metric: str, reference: float, space: Space) -> Path:
        """trials.json (every trial), front.json, best.json and front.png in `out_dir`."""
        best, meets = self.best()
        front = self.front()
        common = {"workload": self.workload, "metric": metric, "reference": reference,
                  "budget": {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                             for k, v in asdict(self.budget).items()},
                  "speed": self.speed, "prefer": self.prefer, "space": space.describe()}
        (out_dir / "trials.json").write_text(json.dumps(
            {**common, "trials": [_json(o) for o in self.outcomes]}, indent=2) + "\n")
        (out_dir / "front.json").write_text(json.dumps(
            {**common, "front": [_json(o) for o in front]}, indent=2) + "\n")
        best_path = out_dir / "best.json"
        if best is not None:
            best_path.write_text(json.dumps(
                {**common, "recipe": best.recipe, "meets_budget": meets,
                 "shortfall": self.budget.shortfall(best), "outcome": _json(best),
                 "bench": f"add \"{best.recipe}\" to the CELLS of {self.workload}'s module, "
                          f"then `nox -s baselines -- -k \"{self.workload}\"`"},
                indent=2) + "\n")
        if front:
            plot_front(out_dir / "front.png", self, front, best, metric)
        return best_path

    def summary(self, metric: str) -> None:
        best, meets = self.best()
        front = self.front()
        failed = sum(not o.measured for o in self.outcomes)
        self.log(f"{len(self.outcomes) - failed} recipes measured"
                 + (f" ({failed} could not run: trials.json says why)" if failed else "")
                 + f"; Pareto front ({metric} drop, size ratio, {self.speed}):")
        for o in front:
            self.log(f"  {o.recipe:<44} drop {o.accuracy_drop:+8.3g}  {o.size_ratio:6.2f}x  "
                     f"{o.speedup:6.2f}x")
        if best is None:
            self.log("no recipe could be measured: nothing saved")
        elif meets:
            self.log(f"best within the budget: {best.recipe}")
        else:
            self.log(f"NO recipe met the budget; the closest (saved as best.json, shortfall "
                     f"{self.budget.shortfall(best):.3g}): {best.recipe}")


def _json(o: Outcome) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(o).items()}


def plot_front(path: Path, search: Search, front: list[Outcome], best: Outcome | None,
               metric: str) -> None:
    """The measured recipes: drop vs size ratio and vs speed; the front in red, the best
    circled, the budget's drop as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    measured = [o for o in search.outcomes if o.measured]
    on_front = {o.number for o in front}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for ax, attr, label in ((axes[0], "size_ratio", "size ratio (x smaller)"),
                            (axes[1], "speedup", f"{search.speed} (x, measured side by side)")):
        for o in measured:
            color = "tab:red" if o.number in on_front else "tab:gray"
            ax.scatter(getattr(o, attr), o.accuracy_drop, color=color,
                       marker="o" if o.execution == "real" else "x")
            if o.number in on_front:
                ax.annotate(o.recipe, (getattr(o, attr), o.accuracy_drop), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        if best is not None:
            ax.scatter(getattr(best, attr), best.accuracy_drop, s=200, facecolors="none",
                       edgecolors="black", label="best recipe")
        ax.axhline(search.budget.max_drop, color="tab:blue", ls="--", lw=0.8,
                   label="budget: max drop")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label)
        # Linear within a unit of the reference, logarithmic beyond: the budget's neighbourhood
        # stays readable beside recipes that collapsed.
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylabel(f"{metric} drop (lower is better)")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{search.workload}: {len(measured)} recipes; red = Pareto front, "
                 "x = simulated")
    fig.savefig(path, dpi=110)
    plt.close(fig)
