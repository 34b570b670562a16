"""Judge a ledger against the baselines, or against another ledger, without pytest.

    python -m benchmarks.harness.compare reports/ledger.json [--baselines baselines/]
    python -m benchmarks.harness.compare pr/ledger.json --against main/ledger.json

Prints one line per check that is not a plain pass and exits 1 when any cell or blessed
Pareto front regressed (or a cell has nothing to compare with), 0 otherwise: the verdicts
`nox -s bench` reaches, from the ledger the run wrote. Against another ledger, its cells are
gated as if they had been blessed (the same tolerances `nox -s baselines` writes), so two
runs of other CI systems, say main and a pull request, can be compared directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.stats import Interval
from benchmarks.harness.verdict import (
    BASELINES,
    BaselineError,
    Check,
    baseline_entry,
    judge,
    judge_evaluation,
    judge_front,
    load_baseline,
    stale_note,
)


@dataclass(frozen=True)
class LedgerCell:
    """One cell of a ledger, with what `judge` reads from a Record."""

    entry: dict

    def __getattr__(self, name: str):
        try:
            return self.entry[name]
        except KeyError:
            raise AttributeError(name) from None

    def gated(self) -> dict[str, float]:
        probes = [f"{name}_speedup" for name in self.entry.get("probe_timings", {})]
        return {m: _number(self.entry.get(m))
                for m in ("accuracy_drop", "size_ratio", "speedup", *probes, *self._fidelity)}

    @property
    def _fidelity(self) -> list[str]:  # ledgers written before fidelity was named held kld
        return self.entry.get("fidelity", ["kld"] if self.entry.get("kld") is not None else [])

    @property
    def drop_interval(self) -> Interval | None:
        return _interval(self.entry.get("accuracy_drop"), self.entry.get("accuracy_drop_ci"))

    def declared_gates(self) -> dict[str, tuple[float, bool]]:
        declared = self.entry.get("declared_gates")
        if declared is None:
            raise ValueError(f"ledger cell {self.entry.get('cell')} does not record its metrics' "
                             "tolerances (written before metrics declared them): measure again "
                             "with this tree")
        return {name: (gate["tolerance"], gate["higher_is_better"])
                for name, gate in declared.items()}

    @property
    def fidelity_intervals(self) -> dict[str, Interval | None]:
        return {m: _interval(self.entry.get(m), self.entry.get(f"{m}_ci"))
                for m in self._fidelity}

    @property
    def speedup_intervals(self) -> dict[str, Interval | None]:
        return {m: _interval(self.entry.get(m), self.entry.get(f"{m}_ci"))
                for m in self.gated() if m.endswith("speedup")}

    def iqr(self, metric: str) -> tuple[float, float]:
        timing = (self.entry["timing"] if metric == "speedup"
                  else self.entry["probe_timings"][metric.removesuffix("_speedup")])
        low, high = timing["speedup_iqr"]
        return float(low), float(high)


def _number(value) -> float:
    return float("nan") if value is None else float(value)  # the ledger writes NaN as null


def _interval(estimate, bounds) -> Interval | None:
    if estimate is None or not bounds or None in bounds:
        return None
    return Interval(float(estimate), float(bounds[0]), float(bounds[1]))


def read_ledger(path: Path) -> dict:
    try:
        ledger = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"compare: cannot read ledger {path}: {err}") from err
    if not ledger.get("cells"):
        raise SystemExit(f"compare: {path} has no cells: nothing was measured")
    return ledger


def compare(ledger_path: Path, baselines: Path = BASELINES) -> list[Check]:
    """Every cell of the ledger judged against the stored baselines."""
    ledger = read_ledger(ledger_path)
    hardware = ledger["run"]["hardware_class"]
    checks: list[Check] = []
    stale_seen = set()
    for entry in ledger["cells"]:
        cell = LedgerCell(entry)
        found = load_baseline(cell.workload, hardware, baselines)
        if found is not None and found.path not in stale_seen:
            stale_seen.add(found.path)
            checks += [c for c in [stale_note(found, ledger["run"])] if c]
        same_class = found is not None and found.hardware_class == hardware
        note = "" if same_class or found is None else (
            f"baseline is from {found.hardware_class}, the ledger from {hardware}")
        checks += judge(cell, found.cell(cell.technique) if found else None,
                        speed_gated=same_class, speed_note=note)
        evaluation = ledger.get("workloads", {}).get(cell.workload, {}).get("evaluation")
        changed = (judge_evaluation(cell.cell, cell.workload, evaluation, found)
                   if evaluation else None)
        checks += [changed] if changed else []
    # Each workload's blessed front, after its cells, as a bench run judges it (over this
    # ledger's cells: a point measured in another ledger is reported as not measured).
    for workload in dict.fromkeys(entry["workload"] for entry in ledger["cells"]):
        found = load_baseline(workload, hardware, baselines)
        if found is not None:
            same_class = found.hardware_class == hardware
            checks += judge_front(
                workload, [LedgerCell(e) for e in ledger["cells"] if e["workload"] == workload],
                found, speed_gated=same_class,
                speed_note=f"baseline is from {found.hardware_class}, the ledger from {hardware}")
    return checks


def compare_ledgers(ledger_path: Path, against_path: Path) -> list[Check]:
    """Every cell of the ledger judged against the same cell of another ledger."""
    ledger, against = read_ledger(ledger_path), read_ledger(against_path)
    old = {entry["cell"]: LedgerCell(entry) for entry in against["cells"]}
    hardware, old_hardware = ledger["run"]["hardware_class"], against["run"]["hardware_class"]
    same_class = hardware == old_hardware
    note = "" if same_class else f"the ledgers are from {old_hardware} and {hardware}"
    checks = []
    for entry in ledger["cells"]:
        cell = LedgerCell(entry)
        before = old.get(cell.cell)
        baseline = baseline_entry(before) if before else None
        if baseline is None:
            checks.append(Check(cell.cell, "baseline", "fail", float("nan"),
                                f"{cell.cell}: not in {against_path}; nothing to compare with"))
            continue
        checks += judge(cell, baseline, speed_gated=same_class, speed_note=note)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ledgers", type=Path, nargs="+", metavar="ledger",
                        help="ledger.json files written by `nox -s bench` (several: the shards "
                        "of one run split across machines)")
    parser.add_argument("--baselines", type=Path, default=BASELINES,
                        help="the baselines folder (one subfolder per hardware class)")
    parser.add_argument("--against", type=Path, metavar="LEDGER",
                        help="judge against this older ledger instead of the baselines")
    args = parser.parse_args(argv)
    checks = []
    for ledger in args.ledgers:
        try:
            checks += (compare_ledgers(ledger, args.against) if args.against
                       else compare(ledger, args.baselines))
        except BaselineError as err:
            raise SystemExit(f"compare: {err}") from err
    for check in checks:
        if check.status != "pass":
            print(check.message)
    failed = sum(c.failed for c in checks)
    print(f"compare: {len(checks)} checks, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
