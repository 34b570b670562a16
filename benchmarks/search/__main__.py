"""python -m benchmarks.search WORKLOAD --max-drop 1.0 [--min-speedup X] [--max-size 2MB] ..."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import compress
from benchmarks import workloads
from benchmarks.search.optimize import PREFER, Budget, Search

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9}


def size_bytes(text: str) -> float:
    """`2MB`, `800kb`, `1500000` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmg]?b?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write 2MB, 800KB or bytes")
    return float(match[1]) * UNITS[match[2]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nox -s optimize --", description="Search a workload's techniques, settings and "
        "pipelines for the best recipe within an accuracy budget; write the Pareto front.")
    parser.add_argument("workload", help="a registered workload's name, or a workload module "
                        "file (.py) or dotted name, as --workloads takes for the bench")
    parser.add_argument("--max-drop", required=True, help="the largest metric drop allowed, "
                        "in the metric's units (1.0 = one point of top-1) or relative to the "
                        "reference with %% (12%%: perplexity up to 12 %% higher)")
    parser.add_argument("--min-speedup", type=float, default=0.0)
    parser.add_argument("--max-size", type=size_bytes, default=float("inf"),
                        help="the largest artifact allowed (2MB, 800KB)")
    parser.add_argument("--speed", default="speedup", help="the speedup searched and "
                        "limited: speedup (the timing batch) or a probe's (decode_speedup)")
    parser.add_argument("--prefer", choices=sorted(PREFER), default="both",
                        help="of the recipes within the budget, the best is the smallest, the "
                        "fastest, or (both) the best geometric mean of the two ratios")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget")
    parser.add_argument("--patience", type=int, default=12, help="stop after this many "
                        "recipes without a better best one")
    parser.add_argument("--trials", type=int, default=None, help="at most this many trials")
    parser.add_argument("--only", default="", help="comma-separated technique names to search "
                        "among (default: every one the workload's scope runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default reports/optimize/<workload>)")
    args = parser.parse_args(argv)
    # What the bench's pytest configuration silences (pyproject.toml): torch.ao's deprecation
    # notices, once per quantized layer, would bury the trials' lines.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*(reduce_range|quantize_per_tensor).*")
    try:
        workloads.use([args.workload])
    except ValueError as err:
        parser.error(str(err))
    (name,) = workloads.WORKLOADS
    relative = args.max_drop.strip().endswith("%")
    try:
        max_drop = float(args.max_drop.strip().rstrip("%"))
    except ValueError:
        parser.error(f"--max-drop {args.max_drop!r}: a number (1.0) or a percentage (12%)")
    only = tuple(filter(None, args.only.split(",")))
    unknown = sorted(set(only) - set(compress.names()))
    if unknown:  # before the workload loads
        parser.error(f"--only {', '.join(unknown)}: no such technique; known: "
                     f"{', '.join(compress.names())}")
    search = Search(name, Budget(max_drop, args.min_speedup, args.max_size, args.minutes,
                                 args.patience, args.trials),
                    speed=args.speed, prefer=args.prefer, seed=args.seed,
                    only=only, relative_drop=relative)
    path = search.run(args.out or ROOT / "reports" / "optimize" / name)
    print(f"written: {path.parent}/ (best.json, front.json, trials.json, front.png)")
    best, meets = search.best()
    return 0 if meets else 1


if __name__ == "__main__":
    sys.exit(main())
