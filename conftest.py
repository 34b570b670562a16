"""pytest wiring for the benchmark matrix: options, the run fixture, the end-of-run table."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def bench_run(request: pytest.FixtureRequest):
    from benchmarks.harness.session import BenchRun

    config = request.config
    device = config.getoption("--device")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"--device {device}: no CUDA device on this machine")
    run = BenchRun(
        device=device,
        threads=config.getoption("--timing-threads"),
        tier=config.getoption("--tier"),
        update_baselines=config.getoption("--update-baselines"),
        report_dir=Path(config.getoption("--report-dir")),
        baselines_root=Path(config.getoption("--baselines-dir")),
    )
    config.stash[_RUN] = run
    return run


_RUN = pytest.StashKey["object"]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is not None:
        session.config.stash[_LINES] = run.finish()


_LINES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None or not run.records:
        return
    from benchmarks.harness.report import text_table

    terminalreporter.section(f"compress-bench ({run.hardware_class}, tier {run.tier})")
    terminalreporter.write_line(text_table(run.records, run.checks))
    for line in config.stash.get(_LINES, []):
        terminalreporter.write_line(line)
