"""The state of one benchmark run: options, loaded workloads, records and verdicts."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import compress
from benchmarks.harness import report
from benchmarks.harness.cell import Reference, measure_reference, run_cell
from benchmarks.harness.provenance import hardware_class, provenance
from benchmarks.harness.record import Record
from benchmarks.harness.verdict import (
    BaselineFile,
    Check,
    bless,
    judge,
    judge_reference,
    load_baseline,
    reference_entry,
    stale_note,
)
from benchmarks.workloads import WORKLOADS, Workload


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
    # What a bless writes for each workload's reference model (reference_entry).
    reference_entries: dict[str, dict] = field(default_factory=dict)

    @property
    def hardware_class(self) -> str:
        return hardware_class(self.device)

    def workload(self, name: str) -> tuple[Workload, Reference]:
        """The workload, loaded (and its reference trained if not cached) once per run."""
        if name not in self.workloads:
            workload = self.workloads[name] = WORKLOADS[name].load()
            reference = self.references[name] = measure_reference(workload, self.device)
            self.reference_entries[name] = reference_entry(
                workload.metric, reference.score.value, workload.higher_is_better,
                workload.checkpoint_sha256)
        return self.workloads[name], self.references[name]

    def baseline(self, workload: str) -> tuple[BaselineFile | None, bool, str]:
        """The baseline file, whether speedups may be gated on it, and why not if not."""
        found = load_baseline(workload, self.hardware_class, self.baselines_root)
        if found is None or found.hardware_class == self.hardware_class:
            return found, True, ""
        return found, False, (f"baseline is from {found.hardware_class}, this machine is "
                              f"{self.hardware_class}")

    def run(self, workload_name: str, technique: str) -> tuple[Record, compress.Compressed]:
        """Measure one cell; a cell that cannot run here raises compress.Unsupported, and the
        report lists it with the reason."""
        workload, reference = self.workload(workload_name)
        try:
            record, compressed = run_cell(workload, reference, technique, device=self.device,
                                          n_threads=self.threads)
        except compress.Unsupported as why:
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
        found, speed_gated, note = self.baseline(record.workload)
        cell = found.cell(record.technique) if found else None
        checks = judge(record, cell, speed_gated=speed_gated, speed_note=note)
        self.checks[record.cell] = checks
        return checks

    def judge_reference(self, workload_name: str) -> Check:
        workload, reference = self.workload(workload_name)
        found, _, _ = self.baseline(workload_name)
        check = judge_reference(workload_name, workload.metric, reference.score.value, found,
                                workload.checkpoint_sha256)
        self.checks[check.cell] = [check]
        stale = stale_note(found, self.run_info()) if found else None
        if stale:
            self.checks[stale.cell] = [stale]
        return check

    def run_info(self) -> dict:
        return {**provenance(self.device, self.threads), "tier": self.tier,
                "device": self.device}

    def finish(self) -> list[str]:
        """Write the reports (and, when asked, the baselines); return lines to print."""
        if not self.records:
            return []
        lines = [checks[0].message for cell, checks in self.checks.items()
                 if cell.endswith(("-reference", "-baseline")) or checks[0].status == "skipped"]
        if self.update_baselines:
            lines += bless(self.records, self.reference_entries, self.hardware_class,
                           self.baselines_root)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        run = self.run_info()
        report.write_ledger(self.report_dir / "ledger.json", self.records, self.checks, run)
        md = report.write_markdown(self.report_dir, self.records, self.checks, run)
        lines += [f"ledger: {self.report_dir / 'ledger.json'}", f"report: {md}"]
        return lines

    # --- sharding: each pytest-xdist worker saves its part, the controller reports the whole

    def save_shard(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump((self.records, self.checks, self.reference_entries), f)

    def add_shards(self, paths: list[Path]) -> None:
        for path in paths:
            with path.open("rb") as f:
                records, checks, references = pickle.load(f)
            self.records += records
            self.checks.update(checks)
            self.reference_entries.update(references)
        order = {(name, t): i for i, (name, t) in
                 enumerate((n, t) for n, module in WORKLOADS.items() for t in module.CELLS)}
        self.records.sort(key=lambda r: order.get((r.workload, r.technique), len(order)))
