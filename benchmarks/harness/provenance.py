"""Where a measurement was taken: hardware class, versions, CPU or GPU, git commit."""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from contextlib import suppress
from functools import cache
from importlib import metadata
from pathlib import Path

import torch

# The CPU features that change which kernels run (int8 VNNI, bf16, AMX), in rising order.
ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16")
# The hardware class of a CPU: its best feature that changes int8/bf16 speed, best first.
# VNNI (int8 dot products) roughly doubles int8 throughput over plain AVX-512 or AVX2.
CPU_CLASSES = (("amx_tile", "amx"), ("avx512_vnni", "avx512vnni"), ("avx512f", "avx512"),
               ("avx_vnni", "avx2vnni"), ("avx2", "avx2"))


@cache
def cpu_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return tuple(f for f in ISA_FLAGS if f in present)
    return ()


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_class(device: str = "cpu") -> str:
    """A coarse class of machines on which speedups are comparable, e.g. cpu-x86_64-avx2."""
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    flags = cpu_flags()
    isa = next((name for flag, name in CPU_CLASSES if flag in flags), "generic")
    return f"cpu-{platform.machine()}-{isa}"


@cache
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The exact versions of the whole stack (`nox -s lock`). A baseline records the digest of the
# lock it was blessed on: one blessed on another lock is stale (verdict.stale_note).
LOCK = Path(__file__).resolve().parents[2] / "stack.lock"


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock (names PEP 503-normalized)."""
    pins = {}
    for line in lock.read_text().splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            pins[_normalized(name.split("[", 1)[0])] = version.strip()
    return pins


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


@cache
def stack() -> dict:
    """The lock this run's stack was built from (`stack_lock`, a digest of its pins), and
    every locked package installed at another version (`stack_drift`, only when any is)."""
    if not LOCK.exists():
        return {"stack_lock": "none"}
    pins = locked_versions(LOCK)
    digest = pins_digest(pins)
    drift = []
    for name, version in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed.split("+", 1)[0] != version.split("+", 1)[0]:  # torch adds +cu130
            drift.append(f"{name} {installed} (locked {version})")
    return {"stack_lock": digest, **({"stack_drift": drift} if drift else {})}


def pins_digest(pins: dict[str, str]) -> str:
    """The short digest that names a lock: of its sorted `name==version` pins."""
    text = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# The libraries whose version changes what a cell measures, recorded by name for the reader.
LIBRARIES = ("torch", "torchvision", "torch-pruning", "transformers", "peft", "bitsandbytes",
             "torchao", "ultralytics")


@cache
def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        with suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    versions["torch"] = torch.__version__  # with its build tag (+cpu, +cu130): it matters
    return versions


def provenance(device: str, n_threads: int) -> dict:
    info = {
        "hardware_class": hardware_class(device),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        **library_versions(),
        **stack(),
        "cpu": cpu_model(),
        "cpu_isa": list(cpu_flags()),
        "threads": n_threads,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
