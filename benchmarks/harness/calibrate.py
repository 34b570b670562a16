"""Noise calibration: how far a cell's speedup moves between runs of an unchanged tree.

    python -m benchmarks.harness.calibrate run1/ledger.json run2/ledger.json ... [--baselines DIR]

`nox -s calibrate` runs the bench several times and calls this on the ledgers. For every cell
with a baseline it stores, next to the baseline, the speedups of those runs and their relative
standard deviation, moves the speedup baseline to their median, and derives the speedup
tolerance from that spread (verdict.speedup_tolerance) instead of from one run's rounds. Size
and accuracy are deterministic: calibration only checks that the runs agree on them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from benchmarks.harness.compare import read_ledger
from benchmarks.harness.verdict import (
    BASELINES,
    BaselineError,
    baseline_path,
    read_baseline,
    refresh_front,
    speedup_tolerance,
)

MIN_RUNS = 3


def calibrate(ledger_paths: list[Path], baselines: Path = BASELINES) -> list[str]:
    """Write the between-run spread of every measured cell into its baseline; say what changed."""
    if len(ledger_paths) < MIN_RUNS:
        raise SystemExit(f"calibrate: {len(ledger_paths)} ledger(s); a spread needs at least "
                         f"{MIN_RUNS} runs of the same tree")
    ledgers = [read_ledger(p) for p in ledger_paths]
    trees = {(ledger["run"]["git_sha"], ledger["run"]["hardware_class"]) for ledger in ledgers}
    if len(trees) != 1:
        raise SystemExit(f"calibrate: the ledgers come from different trees or machines {trees}; "
                         "calibration measures the noise of one unchanged tree on one class")
    (git_sha, hardware_class), = trees
    runs: dict[tuple[str, str], list[dict]] = {}
    for ledger in ledgers:
        for entry in ledger["cells"]:
            runs.setdefault((entry["workload"], entry["technique"]), []).append(entry)

    lines = []
    files: dict[str, dict] = {}
    for (workload, technique), entries in sorted(runs.items()):
        cell = f"{workload}-{technique}"
        if workload not in files:
            path = baseline_path(hardware_class, workload, baselines)
            if not path.exists():
                raise SystemExit(f"calibrate: no baseline {path}; bless one with "
                                 "`nox -s baselines` first")
            try:
                files[workload] = read_baseline(path)
            except BaselineError as err:
                raise SystemExit(f"calibrate: {err}") from err
        stored = files[workload]["cells"].get(technique)
        if stored is None:
            lines.append(f"{cell}: no baseline, not calibrated")
            continue
        if len(entries) < MIN_RUNS:
            lines.append(f"{cell}: measured in {len(entries)} run(s), not calibrated")
            continue
        for metric in ("accuracy_drop", "size_ratio"):
            values = {round(e[metric], 6) for e in entries}
            if len(values) > 1:
                lines.append(f"WARNING {cell}: {metric} differs between runs of one tree "
                             f"{sorted(values)}: the measurement is not deterministic")
        speedups = [e["speedup"] for e in entries]
        broken = sum(not isinstance(v, (int, float)) or not math.isfinite(v) for v in speedups)
        if broken:  # a run whose timing failed (its cell failed that run): nothing to calibrate
            lines.append(f"{cell}: speedup is not a number in {broken} run(s), not calibrated")
            continue
        median = statistics.median(speedups)
        calibration = {"runs": len(speedups), "git_sha": git_sha,
                       "speedups": [round(s, 4) for s in speedups],
                       "rel_sd": round(statistics.stdev(speedups) / median, 4)}
        old = stored["speedup"]
        tolerance = speedup_tolerance(median, (median, median), calibration)
        stored["speedup"] = {**old, "value": round(median, 4), "tolerance": round(tolerance, 4)}
        stored["calibration"] = calibration
        lines.append(f"{cell}: speedup {old['value']} ± {old['tolerance']} -> {median:.4g} "
                     f"± {tolerance:.3g} (between-run sd {100 * calibration['rel_sd']:.1f} % "
                     f"over {len(speedups)} runs)")
    for workload, data in files.items():
        refresh_front(data)  # the speedups it is drawn from moved
        path = baseline_path(hardware_class, workload, baselines)
        path.write_text(json.dumps(data, indent=2) + "\n")
        lines.append(f"wrote {path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ledgers", type=Path, nargs="+",
                        help="ledger.json files of repeated runs of one unchanged tree")
    parser.add_argument("--baselines", type=Path, default=BASELINES,
                        help="the baselines folder (one subfolder per hardware class)")
    args = parser.parse_args(argv)
    for line in calibrate(args.ledgers, args.baselines):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
