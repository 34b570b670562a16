"""pytest wiring for the benchmark matrix: options, the run fixture, the end-of-run table."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compress-bench")
    group.addoption("--tier", choices=("pr", "full"), default="pr",
                    help="pr: the quick cells run on every pull request; full: every cell")
    group.addoption("--device", default="cpu", help="cpu or cuda (the GPU tier)")
    group.addoption("--timing-threads", type=int, default=1,
                    help="intra-op threads while timing (1 is steadiest on a small shared box)")
    group.addoption("--update-baselines", action="store_true",
                    help="bless this run's measurements as the new baselines (review the diff)")
    group.addoption("--report-dir", default=str(ROOT / "reports"),
                    help="where the ledger, Markdown report and plots are written")
    group.addoption("--baselines-dir", default=str(ROOT / "baselines"),
                    help="the stored baselines, one folder per hardware class")
    group.addoption("--workloads", action="append", default=[], metavar="MODULE",
                    help="run these workloads only: a .py file, a dotted module name or a "
                         "registered workload's name (repeatable); see 'Bring your own model'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect full-tier cells unless --tier full: deselected, not skipped, because a skip
    means "cannot run here" and must stay visible."""
    if config.getoption("--tier") == "full":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("full") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _worker(config: pytest.Config) -> tuple[int, int] | None:
    """(index, count) in a pytest-xdist worker, None in a plain run or the controller."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    return int(workerinput["workerid"].removeprefix("gw")), int(workerinput["workercount"])


def _shards(config: pytest.Config) -> Path:
    return Path(config.getoption("--report-dir")) / "shards"


def pytest_configure(config: pytest.Config) -> None:
    """Sharding with pytest-xdist (`-n N`): each worker gets a core of its own, so timed cells
    never share a core; the controller starts from an empty shard folder. Each model family
    is a mark that selects its cells (`-m language`)."""
    from benchmarks import workloads
    from benchmarks.workloads.base import FAMILIES

    if config.getoption("--workloads"):
        try:
            workloads.use(config.getoption("--workloads"))
        except ValueError as err:
            raise pytest.UsageError(str(err)) from None
    for family in FAMILIES:
        config.addinivalue_line("markers", f"{family}: a matrix cell of the {family} family")
    worker = _worker(config)
    if worker is None:
        if getattr(config.option, "numprocesses", None):
            shutil.rmtree(_shards(config), ignore_errors=True)
        return
    index, count = worker
    if not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if count > len(cores):
        raise pytest.UsageError(f"-n {count} workers but only {len(cores)} cores: timed cells "
                                f"would share cores; use -n {len(cores)} or fewer")
    os.sched_setaffinity(0, {cores[index]})


def _new_run(config: pytest.Config, device: str):
    from benchmarks.harness.session import BenchRun

    return BenchRun(
        device=device,
        threads=config.getoption("--timing-threads"),
        tier=config.getoption("--tier"),
        update_baselines=config.getoption("--update-baselines"),
        report_dir=Path(config.getoption("--report-dir")),
        baselines_root=Path(config.getoption("--baselines-dir")),
    )


@pytest.fixture(scope="session")
def bench_run(request: pytest.FixtureRequest):
    config = request.config
    device = config.getoption("--device")
    if device.startswith("cuda"):
        import torch

        # Read when cuBLAS starts: its deterministic mode, which the fine-tunes use, needs it.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if not torch.cuda.is_available():
            pytest.skip(f"--device {device}: no CUDA device on this machine")
        worker = _worker(config)
        if device == "cuda" and worker is not None:  # one worker per GPU
            device = f"cuda:{worker[0] % torch.cuda.device_count()}"
    run = _new_run(config, device)
    config.stash[_RUN] = run
    return run


_RUN = pytest.StashKey["object"]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    run = config.stash.get(_RUN, None)
    worker = _worker(config)
    if worker is not None:  # the controller writes the reports, from every worker's shard
        if run is not None:
            run.save_shard(_shards(config) / f"gw{worker[0]}.pkl")
        return
    shards = sorted(_shards(config).glob("gw*.pkl"))
    if getattr(config.option, "numprocesses", None) and shards:
        run = _new_run(config, config.getoption("--device"))
        run.add_shards(shards)
        shutil.rmtree(_shards(config))
        config.stash[_RUN] = run
    if run is not None:
        config.stash[_LINES] = run.finish()
        # A front is judged here, after the last test (and, sharded, only here in the
        # controller): no test can fail for it, so the exit status must.
        session.exitstatus = run.exit_status(session.exitstatus)


_LINES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None or not run.records:
        return
    from benchmarks.harness.report import findings, notices, text_table

    terminalreporter.section(f"compress-bench ({run.hardware_class}, tier {run.tier})")
    for line in notices(run.run_info()):
        terminalreporter.write_line(line, yellow=True, bold=True)
    terminalreporter.write_line(text_table(run.records, run.checks))
    for line in findings(run.records):
        terminalreporter.write_line(line)
    for line in config.stash.get(_LINES, []):
        terminalreporter.write_line(line)
    if run.front_failures:
        terminalreporter.write_line(
            f"{len(run.front_failures)} Pareto front point(s) moved inward (above): the run "
            "exits non-zero for it even if every test passed", red=True, bold=True)
