"""Where a result comes from: the commit of the checkout and the machine, recorded beside every
published number (benchmarks, ``qspos bench``)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the vector extensions that decide which float and integer kernels run: two CPUs that differ in them
# sum floats in another order (a supernet retrained there is another one) and saturate int8 pairs
# differently (benchmarks/bench_int8_conv.py)
VECTOR_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "sve")


def cpu_flags() -> list[str]:
    """Which of ``VECTOR_FLAGS`` the processor has (from /proc/cpuinfo; empty where there is none)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in VECTOR_FLAGS if f in words]


# what produces the numbers: an uncommitted change here means the commit alone does not say
CODE_PATHS = ("qspos", "quant_kernels", ":(glob)benchmarks/*.py", "benchmarks/configs", "configs")


def git_commit(root: Path | None = None) -> str | None:
    """The short commit the results come from, with ``+modified`` when the code differs from it
    (None outside a git checkout). ``root``: the checkout (default: this package's)."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *CODE_PATHS], cwd=root, capture_output=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip() if head.returncode == 0 else ""
    return (commit + ("+modified" if diff.returncode == 1 else "")) or None


def machine() -> str:
    flags = cpu_flags()
    cpu = cpu_name() + (f" ({', '.join(flags)})" if flags else "")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical CPUs (load average {load} at the start), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")
