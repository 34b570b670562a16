"""Bless ledgers: write their cells as the baselines of the hardware class they were measured on.

    python -m benchmarks.harness.bless reports/ledger.json [more ledgers] [--baselines DIR]

What `nox -s baselines` does on this machine, done for a machine you do not own: download a CI
runner's `reports` artifact, bless its ledger.json here, and review `git diff baselines/` as
for any bless. Several ledgers (the shards of one run) are blessed together. A ledger is
refused if it was measured on another stack than this tree's stack.lock (its baselines would
be stale at once); a cell is refused, as by any bless, if its measurement failed a self-check
or is not a number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.harness.compare import LedgerCell, read_ledger
from benchmarks.harness.provenance import stack
from benchmarks.harness.verdict import BASELINES, bless


def bless_ledgers(paths: list[Path], baselines: Path = BASELINES) -> list[str]:
    """Bless every sound cell of the ledgers; say what changed and what was refused."""
    lines: list[str] = []
    by_class: dict[str, tuple[list[LedgerCell], dict[str, dict]]] = {}
    here = stack()["stack_lock"]
    for path in paths:
        ledger = read_ledger(path)
        run = ledger["run"]
        if not ledger.get("workloads"):
            raise SystemExit(f"bless: {path} does not record its workloads' references and "
                             "evaluations (written before ledgers could be blessed); measure "
                             "again with this tree")
        if run.get("stack_lock") != here or run.get("stack_drift"):
            drift = f", drifted: {', '.join(run['stack_drift'])}" if run.get("stack_drift") else ""
            raise SystemExit(f"bless: {path} was measured on stack {run.get('stack_lock')}"
                             f"{drift}; this tree's stack.lock is {here}. Bless it from the "
                             "commit whose lock it ran on, or measure again on this one")
        cells, workloads = by_class.setdefault(run["hardware_class"], ([], {}))
        workloads.update(ledger["workloads"])
        cells += [LedgerCell(entry) for entry in ledger["cells"]]
    for hardware_class, (cells, workloads) in sorted(by_class.items()):
        lines += bless(cells, workloads, hardware_class, baselines)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ledgers", type=Path, nargs="+", metavar="ledger",
                        help="ledger.json files written by `nox -s bench`")
    parser.add_argument("--baselines", type=Path, default=BASELINES,
                        help="the baselines folder (one subfolder per hardware class)")
    args = parser.parse_args(argv)
    lines = bless_ledgers(args.ledgers, args.baselines)
    for line in lines:
        print(line)
    print("review `git diff baselines/` and commit it with the reason")
    return 1 if any(line.startswith("refused") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
