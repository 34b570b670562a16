"""Reports: the terminal table, the JSON ledger and the Markdown report with Pareto plots."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import pareto
from benchmarks.harness.pareto import (
    ACCURACY_DROP,
    CELL_OBJECTIVES,
    SIZE_RATIO,
    SPEEDUP,
    cell_point,
)
from benchmarks.harness.record import Record
from benchmarks.harness.verdict import Check
from compress.kernels import describe


def cell_verdict(checks: Iterable[Check]) -> str:
    """One word per cell: FAIL beats improved beats below detectable beats blessed beats pass."""
    statuses = {c.status for c in checks}
    for status, word in (("fail", "FAIL"), ("improved", "improved"),
                         ("undetectable", "below detectable"), ("blessed", "blessed")):
        if status in statuses:
            return word
    return "pass" if statuses else "not judged"


def _rows(records: list[Record], checks: dict[str, list[Check]]) -> list[list[str]]:
    rows = []
    for r in records:
        speed = f"{r.speedup:.2f}x [{r.speedup_interval.low:.2f}, {r.speedup_interval.high:.2f}]"
        drop = f"{r.accuracy_drop:+.2f}"
        if r.drop_interval is not None:
            drop += f" [{r.drop_interval.low:+.2f}, {r.drop_interval.high:+.2f}]"
        if r.execution == "simulated":
            speed += " sim"
        if "speedup" in r.slower:
            speed += " slower"
        rows.append([
            r.workload, r.technique, r.execution, describe(r.kernels) or "-",
            f"{r.reference_metric:.2f} -> {r.compressed_metric:.2f}"
            + (" collapsed" if r.collapsed else ""),
            drop,
            f"{r.compressed_size.size_bytes / 1e6:.3f}",
            f"{r.size_ratio:.2f}x",
            f"{r.gzip_ratio:.2f}x",
            f"{r.compressed_peak_memory_bytes / 1e6:.2f}",
            speed,
            cell_verdict(checks.get(r.cell, [])),
            more(r),
        ])
    return rows


def more(r: Record) -> str:
    """Each probe's speedup, then the workload's extra numbers (throughputs, per-corpus
    metrics, similarity to the reference)."""
    parts = [f"{name} {t.speedup:.2f}x" + (" slower" if f"{name}_speedup" in r.slower else "")
             for name, t in r.probe_timings.items()]
    parts += [f"{key} {_number(value)}" for key, value in r.extras.items()]
    return "; ".join(parts)


def _number(value: float) -> str:
    """Counts (bytes) in full, other numbers to 4 significant digits."""
    return f"{int(value)}" if float(value).is_integer() and abs(value) >= 1e4 else f"{value:.4g}"


def notices(run: dict) -> list[str]:
    """What a reader must know before the table: speedups this run could not gate, and a stack
    that is not the locked one."""
    lines = []
    ungated: dict[str, list[str]] = {}
    for workload, why in run.get("speedups_not_gated", {}).items():
        ungated.setdefault(why, []).append(workload)
    for why, workloads in ungated.items():
        lines.append(f"Speedups reported, NOT GATED for {', '.join(workloads)}: {why}. Bless "
                     f"this class ({run['hardware_class']}) to gate them: README, \"Updating "
                     "baselines\".")
    if run.get("stack_drift"):
        lines.append("This run's stack is not stack.lock's (" + ", ".join(run["stack_drift"])
                     + "): numbers may differ from the baselines for that reason alone; "
                     "`nox -s bench` builds the locked stack.")
    return lines


def findings(records: list[Record]) -> list[str]:
    """Cells to read twice: real kernels measured slower than the reference, and compressed
    models collapsed to the task's floor (their metric no longer moves with the technique)."""
    lines = []
    for r in records:
        for metric in r.slower:
            interval = r.speedup_intervals[metric]
            lines.append(f"{r.cell}: slower than the reference: real execution, {metric} "
                         f"{interval.estimate:.2f}x [{interval.low:.2f}, {interval.high:.2f}]")
        if r.collapsed:
            lines.append(f"{r.cell}: collapsed: {r.metric} {r.compressed_metric:.4g} is at the "
                         f"task's floor {r.floor:.4g} (reference {r.reference_metric:.4g})")
    return lines


def front_notes(checks: list[Check]) -> list[str]:
    """What the end of a run says of the Pareto fronts: each point that moved (or could not be
    judged), and in one line the workloads that have no blessed front."""
    lines = [c.message for c in checks if c.status != "pass" and c.metric != "no_front"]
    bare = [c.cell.removesuffix("-front") for c in checks if c.metric == "no_front"]
    if bare:
        lines.append(f"No blessed Pareto front for {', '.join(bare)}, so no front gate there: "
                     "bless to store one (`nox -s baselines`)")
    return lines


HEADER = ["workload", "technique", "exec", "kernel", "metric ref -> comp", "drop [95% CI]",
          "size MB", "size ratio", "gzip ratio", "peak MB", "speedup [95% CI]", "verdict", "more"]


def text_table(records: list[Record], checks: dict[str, list[Check]]) -> str:
    rows = [HEADER, *_rows(records, checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(records: list[Record], checks: dict[str, list[Check]]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *_rows(records, checks)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_ledger(path: Path, records: list[Record], checks: dict[str, list[Check]],
                 run: dict, workloads: dict[str, dict] | None = None) -> None:
    """`workloads`: what a baseline stores of each workload besides its cells (the reference's
    entry, the evaluation), so that a ledger can be blessed (benchmarks.harness.bless)."""
    ledger = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": run,
        "workloads": workloads or {},
        "cells": [
            {**r.to_json(), "verdict": cell_verdict(checks.get(r.cell, [])),
             "checks": [{"metric": c.metric, "status": c.status, "message": c.message}
                        for c in checks.get(r.cell, [])]}
            for r in records
        ],
        # Checks of no measured cell: the reference model, stale baselines, skipped cells.
        "workload_checks": [{"cell": c.cell, "metric": c.metric, "status": c.status,
                             "message": c.message}
                            for cell, cs in checks.items() for c in cs
                            if cell not in {r.cell for r in records}],
    }
    path.write_text(json.dumps(ledger, indent=2) + "\n")


def pareto_plot(path: Path, workload: str, records: list[Record]) -> None:
    """Metric vs size ratio and metric vs speedup; Pareto-optimal cells are labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = records[0].metric
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    # The front of each panel is the gate's (pareto.py), over the accuracy drop and the panel's
    # other objective, with a simulated cell's speedup taken as the 1.0 it claims. A broken
    # measurement (not a number) is on no front: its cell fails for it.
    points = {r.technique: cell_point({o.name: getattr(r, o.name) for o in CELL_OBJECTIVES},
                                      simulated=r.execution == "simulated") for r in records}
    points = {t: p for t, p in points.items() if all(map(math.isfinite, p.values()))}
    for ax, objective, label in ((axes[0], SIZE_RATIO, "size ratio (x smaller)"),
                                 (axes[1], SPEEDUP, "speedup (x, measured side by side)")):
        xs = [getattr(r, objective.name) for r in records]
        front = set(pareto.front(points, (ACCURACY_DROP, objective)))
        for i, r in enumerate(records):
            marker = "o" if r.execution == "real" else "x"
            color = "tab:red" if r.technique in front else "tab:gray"
            ax.scatter(xs[i], r.compressed_metric, marker=marker, color=color)
            if r.technique in front:
                ax.annotate(r.technique, (xs[i], r.compressed_metric), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.axhline(records[0].reference_metric, color="tab:blue", lw=0.8, ls="--",
                   label="reference")
        ax.axvline(1.0, color="black", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(f"{workload}: red = Pareto-optimal, x = simulated (no real speedup)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline_points(records: list[Record], probe: str) -> tuple[list, float | None]:
    """(label, weight bytes per item, measured items/s) of the reference and every cell of a
    probe that streams its weights, and the bandwidth (GB/s) the cells were bounded with."""
    unit = next((k.removeprefix(f"{probe}_bytes_per_") for r in records for k in r.extras
                 if k.startswith(f"{probe}_bytes_per_")), None)
    cells = [r for r in records if unit and f"{probe}_bytes_per_{unit}" in r.extras]
    if not cells:
        return [], None
    first = cells[0]
    items = first.extras[f"{probe}_{unit}_per_s"] * _median_ms(first, probe) / 1e3
    points = [("reference", first.reference_size.memory_bytes,
               items / (_median_ms(first, probe, "reference") / 1e3))]
    points += [(r.technique, r.extras[f"{probe}_bytes_per_{unit}"],
                r.extras[f"{probe}_{unit}_per_s"]) for r in cells]
    bandwidth = (first.extras[f"{probe}_roofline_{unit}_per_s"]
                 * first.extras[f"{probe}_bytes_per_{unit}"] / 1e9)
    return points, bandwidth


def _median_ms(r: Record, probe: str, which: str = "compressed") -> float:
    values = sorted(getattr(r.probe_timings[probe], f"{which}_ms"))
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def roofline_plot(path: Path, workload: str, probe: str, records: list[Record]) -> bool:
    """Measured rate against weight bytes per item, log-log, with the line the memory
    bandwidth draws (rate = bandwidth / bytes): how far each cell is from its limit."""
    points, bandwidth = roofline_points(records, probe)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    sizes = [b for _, b, _ in points]
    xs = [min(sizes) / 1.5, max(sizes) * 1.5]
    ax.plot(xs, [bandwidth * 1e9 / x for x in xs], color="tab:blue",
            label=f"memory bandwidth {bandwidth:.1f} GB/s (copy, timing threads)")
    for label, per_item, rate in points:
        ax.scatter(per_item, rate, color="tab:gray" if label == "reference" else "tab:red")
        ax.annotate(label, (per_item, rate), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight bytes read per item (resident weights)")
    ax.set_ylabel(f"{probe}: items per second (measured)")
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{workload}: {probe} against the bandwidth roofline")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def picture_gallery(folder: Path, workload: str, records: list[Record],
                    per_row: int = 4) -> list[str]:
    """Markdown for the reference's picture beside each cell's, each saved as a PNG and
    captioned with its metric; nothing for a workload without pictures."""
    from PIL import Image

    shown = [r for r in records if r.pictures]
    if not shown:
        return []
    first = shown[0]
    entries = [("reference", first.pictures["reference"],
                f"{first.metric} {_number(first.reference_metric)}")]
    entries += [(r.technique, r.pictures["compressed"],
                 f"{r.metric} {_number(r.compressed_metric)}") for r in shown]
    cells = []
    for name, image, caption in entries:
        file = f"picture-{workload}-{re.sub(r'[^A-Za-z0-9.-]', '_', name)}.png"
        Image.fromarray(image).save(folder / file)
        cells.append((f"{name}<br>{caption}", f"![{name}]({file})"))
    lines = [f"What the numbers look like: the same output of {workload} from each model.", ""]
    for start in range(0, len(cells), per_row):
        row = cells[start:start + per_row]
        lines += ["| " + " | ".join(title for title, _ in row) + " |",
                  "|" + " --- |" * len(row),
                  "| " + " | ".join(image for _, image in row) + " |", ""]
    return lines


def write_markdown(folder: Path, records: list[Record], checks: dict[str, list[Check]],
                   run: dict) -> Path:
    path = folder / "report.md"
    failing = [c.message for cs in checks.values() for c in cs if c.failed]
    improved = [c.message for cs in checks.values() for c in cs if c.status == "improved"]
    unresolved = [c.message for cs in checks.values() for c in cs if c.status == "undetectable"]
    stale = [c.message for cs in checks.values() for c in cs if c.status == "stale"]
    skipped = [c.message for cs in checks.values() for c in cs if c.status == "skipped"]
    lines = [
        "# compress-bench report",
        "",
        f"Hardware class `{run['hardware_class']}`, {run['cpu']}, torch {run['torch']}, "
        f"{run['threads']} timing thread(s), commit `{run['git_sha']}`, tier `{run['tier']}`.",
        "",
        "`drop` is the task metric lost (pp for top-1, points for perplexity), with its 95 % "
        "interval from a paired bootstrap over the test samples (`collapsed`: at the task's "
        "floor, such as chance); `size ratio` is reference bytes over compressed bytes of the "
        "saved state_dict (gzip ratio: the same, gzip-compressed at level 1); `speedup` is the "
        "median ratio of reference to compressed latency over interleaved rounds, with its "
        "bootstrap 95 % interval. `sim` marks simulated execution (masks or casts with no fast "
        "kernel here): its speedup is reported, never claimed; `slower`: real kernels whose "
        "whole interval is below 1x. `kernel`: the low-bit operators that ran, which prove a "
        "real cell's claim (torch profiler op names, ggml tensor types, ONNX Runtime node "
        "types, with counts). `below detectable`: beyond the "
        "tolerance, but the interval still holds the baseline. `more`: each probe's speedup "
        "(gated, e.g. LLM decoding), throughputs and the workload's other numbers; for a "
        "decode, the weight bytes a token reads, the tokens/s the memory bandwidth allows at "
        "that (`roofline`) and the share of it measured. `compress_s`, `compress_peak_mib`: "
        "what compressing took, in seconds and in memory above what the process held.",
        "",
        *[f"**{line}**\n" for line in notices(run)],
        markdown_table(records, checks),
        "",
    ]
    if failing:
        lines += ["## Regressions", "", *[f"- {m}" for m in failing], ""]
    if improved:
        lines += ["## Improved (re-bless the baseline)", "", *[f"- {m}" for m in improved], ""]
    if unresolved:
        lines += ["## Below detectable (not failed)", "", *[f"- {m}" for m in unresolved], ""]
    if stale:
        lines += ["## Stale baselines", "", *[f"- {m}" for m in stale], ""]
    found = findings(records)
    if found:
        lines += ["## Slower than the reference, or collapsed", "",
                  *[f"- {m}" for m in found], ""]
    if skipped:
        lines += ["## Skipped (cannot run here)", "", *[f"- {m}" for m in skipped], ""]
    by_workload: dict[str, list[Record]] = {}
    for r in records:
        by_workload.setdefault(r.workload, []).append(r)
    for workload, recs in by_workload.items():
        plot = folder / f"pareto-{workload}.png"
        pareto_plot(plot, workload, recs)
        notes = "; ".join(f"{key}: {value}" for key, value in recs[0].workload_notes.items())
        lines += [f"## {workload}", "", *([notes, ""] if notes else []),
                  f"![Pareto plot of {workload}]({plot.name})", ""]
        for probe in dict.fromkeys(p for r in recs for p in r.probe_timings):
            roof = folder / f"roofline-{workload}-{probe}.png"
            if roofline_plot(roof, workload, probe, recs):
                lines += [f"![{probe} of {workload} against the bandwidth roofline]"
                          f"({roof.name})", ""]
        lines += picture_gallery(folder, workload, recs)
    path.write_text("\n".join(lines))
    return path
