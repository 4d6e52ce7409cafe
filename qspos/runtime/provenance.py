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
    cpu = cpu_name()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical CPUs (load average {load} at the start), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")
