"""Judge a ledger against the baselines without pytest, for other CI systems.

    python -m benchmarks.harness.compare reports/ledger.json [--baselines baselines/]

Prints one line per check that is not a plain pass and exits 1 when any cell regressed (or
has no baseline), 0 otherwise: the same verdicts `nox -s bench` reaches, from the ledger the
run wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.stats import Interval
from benchmarks.harness.verdict import BASELINES, Check, judge, load_baseline


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
        return {m: _number(self.entry.get(m)) for m in ("accuracy_drop", "size_ratio", "speedup")}

    @property
    def drop_interval(self) -> Interval | None:
        return _interval(self.entry.get("accuracy_drop"), self.entry.get("accuracy_drop_ci"))

    @property
    def speedup_interval(self) -> Interval | None:
        return _interval(self.entry.get("speedup"), self.entry.get("speedup_ci"))


def _number(value) -> float:
    return float("nan") if value is None else float(value)  # the ledger writes NaN as null


def _interval(estimate, bounds) -> Interval | None:
    if estimate is None or not bounds or None in bounds:
        return None
    return Interval(float(estimate), float(bounds[0]), float(bounds[1]))


def compare(ledger_path: Path, baselines: Path = BASELINES) -> list[Check]:
    try:
        ledger = json.loads(ledger_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"compare: cannot read ledger {ledger_path}: {err}") from err
    if not ledger.get("cells"):
        raise SystemExit(f"compare: {ledger_path} has no cells: nothing was measured")
    hardware = ledger["run"]["hardware_class"]
    checks = []
    for entry in ledger["cells"]:
        cell = LedgerCell(entry)
        found = load_baseline(cell.workload, hardware, baselines)
        same_class = found is not None and found.hardware_class == hardware
        note = "" if same_class or found is None else (
            f"baseline is from {found.hardware_class}, the ledger from {hardware}")
        checks += judge(cell, found.cell(cell.technique) if found else None,
                        speed_gated=same_class, speed_note=note)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ledger", type=Path, help="a ledger.json written by `nox -s bench`")
    parser.add_argument("--baselines", type=Path, default=BASELINES,
                        help="the baselines folder (one subfolder per hardware class)")
    args = parser.parse_args(argv)
    checks = compare(args.ledger, args.baselines)
    for check in checks:
        if check.status != "pass":
            print(check.message)
    failed = sum(c.failed for c in checks)
    print(f"compare: {len(checks)} checks, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
