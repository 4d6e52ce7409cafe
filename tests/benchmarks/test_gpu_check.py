"""benchmarks/gpu_check.py, the one command a lent GPU runs, in its CPU form (``--device cpu
--tiny``): every section must run and record a result, so the script is known to work before a
GPU's few minutes are spent on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"supernet_train", "float_baseline", "host_syncs", "candidate_eval", "torchrun_resume", "loader",
            "compiled_backend"}


def _errors(node: object, where: str = "") -> list[str]:
    """Every ``error`` entry anywhere in the results, with its path."""
    if isinstance(node, dict):
        found = [f"{where}: {node['error']}"] if "error" in node else []
        return found + [e for k, v in node.items() for e in _errors(v, f"{where}.{k}")]
    return []


def _kept_results() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (ROOT / "benchmarks" / "results").glob("gpu.*")}


def test_gpu_check_runs_on_cpu(tmp_path):
    kept = _kept_results()
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    dump = json.dumps(result, indent=1)
    sections = result["sections"]
    assert set(sections) == SECTIONS, dump
    assert result["finished"] and result["environment"]["cpu_count"], dump
    assert not _errors(sections), dump
    for backend in ("reference", "fused"):
        assert sections["supernet_train"]["backends"][backend]["ms_per_step"] > 0, dump
    assert sections["host_syncs"]["syncs_per_step"] is None and sections["host_syncs"]["reason"] == "cuda only", dump
    run = sections["torchrun_resume"]
    assert run["uninterrupted"]["rc"] == 0 and run["resumed"]["rc"] == 0, dump
    assert run["interrupted"]["checkpoint_complete"] is False, dump  # it really was stopped mid-run
    assert run["weights"]["equal"] and run["weights"]["differ"] == 0, dump
    assert sections["candidate_eval"]["evaluate_images_per_s"] > 0 and sections["loader"]["images_per_s"] > 0, dump
    report = (tmp_path / "gpu.md").read_text()
    assert "gpu_check.py --device cpu --tiny" in report, report
    assert _kept_results() == kept  # --out is honoured: the committed results stay as they are
