"""The runnable examples of examples/, at tiny size: they must keep working as the API moves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qspos.runtime.data import DEBIAN_FASHION_MNIST

EXAMPLES = Path(__file__).parent.parent / "examples"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_custom_loop():
    out = _run("custom_loop.py")  # calibrates its thresholds in from_model and measures the start
    assert "before training: largest path" in out and "best arch {" in out and "MBitOps" in out
    assert "Sequential" in out


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (setup.sh)")
def test_own_model_pipeline(tmp_path):
    out = _run("own_model_pipeline.py", "--out", str(tmp_path / "run"))
    assert "w4a4:" in out and "test top-1" in out
    assert (tmp_path / "run" / "export" / "w4a4" / "model_qcdq.onnx").is_file()
    assert (tmp_path / "run" / "finetune" / "w4a4" / "layers.json").is_file()
