"""The state of one benchmark run: options, loaded workloads, records and verdicts."""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

import compress
from benchmarks.harness import report
from benchmarks.harness.cell import Reference, measure_reference, run_cell
from benchmarks.harness.measure import copy_bandwidth_gbps
from benchmarks.harness.provenance import hardware_class, provenance
from benchmarks.harness.record import Record
from benchmarks.harness.verdict import (
    BaselineError,
    BaselineFile,
    Check,
    bless,
    judge,
    judge_evaluation,
    judge_front,
    judge_reference,
    load_baseline,
    reference_entry,
    stale_note,
)
from benchmarks.workloads import WORKLOADS, Workload

# What a worker's shard starts with when its part could not be pickled, followed by why.
SHARD_NOT_SAVED = b"compress-bench: this pytest-xdist worker could not save its records: "


@dataclass
class BenchRun:
    device: str
    threads: int
    tier: str
    update_baselines: bool
    report_dir: Path
    baselines_root: Path
    workloads: dict[str, Workload] = field(default_factory=dict)
    references: dict[str, Reference] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    checks: dict[str, list[Check]] = field(default_factory=dict)
    # What a baseline file stores of each workload besides its cells: "reference"
    # (reference_entry), "evaluation" (what was evaluated), "skipped" (cells that cannot run).
    workload_entries: dict[str, dict] = field(default_factory=dict)
    copy_bandwidth_gbps: float | None = None  # measured when a workload needs it

    @property
    def hardware_class(self) -> str:
        return hardware_class(self.device)

    def workload(self, name: str) -> tuple[Workload, Reference]:
        """The workload, loaded (and its reference trained if not cached) once per run."""
        if name not in self.workloads:
            workload = self.workloads[name] = WORKLOADS[name].load()
            reference = self.references[name] = measure_reference(workload, self.device)
            self.workload_entries[name] = {
                "reference": reference_entry(workload.metric.name, reference.score.value,
                                             workload.metric.higher_is_better,
                                             workload.checkpoint_sha256, workload.floor,
                                             tuple(m.name for m in workload.fidelity)),
                "evaluation": asdict(workload.evaluation)}
        return self.workloads[name], self.references[name]

    def baseline(self, workload: str) -> tuple[BaselineFile | None, bool, str]:
        """The baseline file, whether speedups may be gated on it, and why not if not."""
        found = load_baseline(workload, self.hardware_class, self.baselines_root)
        if found is None or found.hardware_class == self.hardware_class:
            return found, True, ""
        return found, False, (f"baseline is from {found.hardware_class}, this machine is "
                              f"{self.hardware_class}")

    def bandwidth_gbps(self, workload: Workload) -> float | None:
        """The host's copy bandwidth on the timing threads, measured once per run and only
        for workloads whose probes it bounds (decode)."""
        if not any(p.streams_weights for p in workload.probes.values()):
            return None
        if self.copy_bandwidth_gbps is None:
            self.copy_bandwidth_gbps = round(copy_bandwidth_gbps(self.threads), 2)
        return self.copy_bandwidth_gbps

    def run(self, workload_name: str, technique: str) -> tuple[Record, compress.Compressed]:
        """Measure one cell; a cell that cannot run here raises compress.Unsupported, and the
        report lists it with the reason."""
        workload, reference = self.workload(workload_name)
        try:
            record, compressed = run_cell(workload, reference, technique, device=self.device,
                                          n_threads=self.threads,
                                          bandwidth_gbps=self.bandwidth_gbps(workload))
        except compress.Unsupported as why:
            entry = self.workload_entries.setdefault(workload_name, {})
            entry.setdefault("skipped", {})[technique] = str(why)
            cell = f"{workload_name}-{technique}"
            self.checks[cell] = [Check(cell, "all", "skipped", math.nan, f"{cell}: {why}")]
            raise
        self.records.append(record)
        return record, compressed

    def judge(self, record: Record) -> list[Check]:
        if self.update_baselines:
            checks = [Check(record.cell, "all", "blessed", math.nan, f"{record.cell}: blessed")]
            self.checks[record.cell] = checks
            return checks
        try:
            found, speed_gated, note = self.baseline(record.workload)
        except BaselineError as err:
            return self._baseline_unusable(record.cell, err)
        cell = found.cell(record.technique) if found else None
        checks = judge(record, cell, speed_gated=speed_gated, speed_note=note,
                       awaiting=found.awaiting(record.technique) if found else None)
        evaluation = judge_evaluation(record.cell, record.workload,
                                      self.evaluation(record.workload), found)
        if evaluation is not None:
            checks.append(evaluation)
        self.checks[record.cell] = checks
        return checks

    def judge_reference(self, workload_name: str) -> list[Check]:
        """The reference model still scores what its baseline says, on what it was blessed on."""
        workload, reference = self.workload(workload_name)
        try:
            found, _, _ = self.baseline(workload_name)
        except BaselineError as err:
            return self._baseline_unusable(f"{workload_name}-reference", err)
        check = judge_reference(workload_name, workload.metric.name, reference.score.value, found,
                                workload.checkpoint_sha256)
        evaluation = judge_evaluation(check.cell, workload_name,
                                      self.evaluation(workload_name), found)
        checks = [check] + ([evaluation] if evaluation else [])
        self.checks[check.cell] = checks
        stale = stale_note(found, self.run_info()) if found else None
        if stale:
            self.checks[stale.cell] = [stale]
        return checks

    def judge_fronts(self) -> list[Check]:
        """Each measured workload's blessed Pareto front against this run's cells of it. It
        needs every cell in, so it runs once, at the end (in the controller of a sharded run,
        after the workers' shards are merged: a worker sees only its own cells)."""
        checks = []
        for workload in dict.fromkeys(r.workload for r in self.records):
            try:
                found, speed_gated, note = self.baseline(workload)
            except BaselineError:
                continue  # its cells failed with what to fix already
            if found is None:
                continue  # its cells failed already: no baseline, bless one
            cell = f"{workload}-front"
            evaluation = self.workload_entries.get(workload, {}).get("evaluation")
            if evaluation and judge_evaluation(cell, workload, evaluation, found):
                front = [Check(cell, "front", "reported", math.nan,
                               f"{cell}: not judged: this run evaluated other data than the "
                               "baseline was blessed on (its cells fail for it)")]
            else:
                front = judge_front(workload, [r for r in self.records if r.workload == workload],
                                    found, speed_gated=speed_gated, speed_note=note)
            self.checks[cell] = front
            checks += front
        return checks

    @property
    def front_failures(self) -> list[Check]:
        return [c for cell, checks in self.checks.items() if cell.endswith("-front")
                for c in checks if c.failed]

    def exit_status(self, status: int) -> int:
        """pytest's exit status with the fronts' verdicts in: they are reached after the last
        test, so no test can fail for them, and a run whose front moved inward must not exit
        0 (CI reads the status). Any other failure keeps its own status."""
        if status == pytest.ExitCode.OK and self.front_failures:
            return pytest.ExitCode.TESTS_FAILED
        return status

    def _baseline_unusable(self, cell: str, err: BaselineError) -> list[Check]:
        """A malformed baseline file fails the cell with what to fix: never a pass, never a
        traceback."""
        checks = [Check(cell, "baseline", "fail", math.nan, f"{cell}: {err}")]
        self.checks[cell] = checks
        return checks

    def evaluation(self, workload: str) -> dict:
        return self.workload_entries[workload]["evaluation"]

    def run_info(self) -> dict:
        """The run's provenance, and which measured workloads' speedups it could not gate."""
        ungated = {}
        for workload in dict.fromkeys(r.workload for r in self.records):
            try:
                found, gated, why = self.baseline(workload)
            except BaselineError as err:  # its cells failed with this message already
                found, gated, why = None, False, str(err)
            if found is None or not gated:
                ungated[workload] = why or f"no baseline of {self.hardware_class}"
        return {**provenance(self.device, self.threads), "tier": self.tier,
                "device": self.device, "speedups_not_gated": ungated,
                **({"copy_bandwidth_gbps": self.copy_bandwidth_gbps}
                   if self.copy_bandwidth_gbps else {})}

    def finish(self) -> list[str]:
        """Write the reports (and, when asked, the baselines); return lines to print."""
        lines = [check.message for cell, checks in self.checks.items() for check in checks
                 if cell.endswith(("-reference", "-baseline")) or check.status == "skipped"]
        if self.update_baselines:  # a bless of only cells that skip still records why
            lines += bless(self.records, self.workload_entries, self.hardware_class,
                           self.baselines_root)
        else:
            lines += report.front_notes(self.judge_fronts())
        if not self.records:
            return lines
        self.report_dir.mkdir(parents=True, exist_ok=True)
        run = self.run_info()
        report.write_ledger(self.report_dir / "ledger.json", self.records, self.checks, run,
                            self.workload_entries)
        md = report.write_markdown(self.report_dir, self.records, self.checks, run)
        lines += [f"ledger: {self.report_dir / 'ledger.json'}", f"report: {md}"]
        return lines

    # --- sharding: each pytest-xdist worker saves its part, the controller reports the whole

    def save_shard(self, path: Path) -> None:
        """Write this worker's part atomically, so the controller never reads a half-written
        one. A part that cannot be pickled is written as a note of why, and the controller
        fails on it: xdist hides a worker's error here, and a missing shard would go unseen."""
        failure = None
        try:
            data = pickle.dumps((self.records, self.checks, self.workload_entries))
        except Exception as err:
            failure, data = err, SHARD_NOT_SAVED + f"{type(err).__name__}: {err}".encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # not a gw*.pkl the controller would read
        tmp.write_bytes(data)
        tmp.replace(path)
        if failure is not None:
            raise failure

    def add_shards(self, paths: list[Path]) -> None:
        for path in paths:
            data = path.read_bytes()
            if data.startswith(SHARD_NOT_SAVED):
                raise RuntimeError(f"{path}: {data.decode(errors='replace')}. Fix that (a "
                                   "record must pickle) and rerun; without -n the run reports "
                                   "without sharding.")
            try:
                records, checks, references = pickle.loads(data)
            except Exception as err:  # EOFError, UnpicklingError, a class that moved...
                raise RuntimeError(
                    f"{path}: cannot read this pytest-xdist worker's shard ({type(err).__name__}:"
                    f" {err}): rerun the benchmark (each -n run starts from an empty shard "
                    f"folder), or run it without -n to report without sharding.") from err
            self.records += records
            self.checks.update(checks)
            for name, entry in references.items():  # a workload's cells may span workers
                mine = self.workload_entries.setdefault(name, {})
                skipped = {**mine.get("skipped", {}), **entry.get("skipped", {})}
                mine.update(entry, **({"skipped": skipped} if skipped else {}))
        order = {(name, t): i for i, (name, t) in
                 enumerate((n, t) for n, module in WORKLOADS.items() for t in module.CELLS)}
        self.records.sort(key=lambda r: order.get((r.workload, r.technique), len(order)))
