"""``qspos run``: the whole pipeline end to end in a subprocess, refusal to overwrite, and resume
after a kill that lands once the search is done."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qspos.cli import main
from qspos.formats.registry import FORMATS
from tests.helpers import tiny_config


def _config(tmp_path: Path) -> Path:
    """Tiny ResNet-8 on synthetic 12x12 images: every stage takes about a second."""
    cfg = tiny_config(population=6, iterations=1, mutation_count=3, crossover_count=3)
    cfg["space"]["weight_bits"] = [1, 2, 4]
    cfg.update(train={"epochs": 1, "warmup_epochs": 0, "lr": 0.05}, finetune={"epochs": 1})
    cfg["data"]["batch_size"] = 16
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _qspos(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "qspos", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_run_goes_end_to_end_and_refuses_to_overwrite(tmp_path):
    cfg, out = _config(tmp_path), tmp_path / "run"
    proc = _qspos("run", str(cfg), "--out", str(out))
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    net = out / "finetune" / "w3a3"
    result = json.loads((net / "result.json").read_text())
    assert 0 <= result["test_top1"] <= 1 and result["search_val_top1"] is not None
    summary = json.loads((out / "export" / "w3a3" / "summary.json").read_text())
    assert summary["packed_bytes"] > 0 and "qonnx" in summary["files"]
    report = (out / "report.md").read_text()
    assert "![" in report and "search/pareto.png" in report and (out / "search" / "pareto.png").is_file()
    assert "| w3a3 | searched" in report and "| w3a3 | uniform W3A3" in report
    assert (out / "pareto.png").stat().st_size > 1000 and "![top-1 against BitOps](pareto.png)" in report
    assert re.search(r"\| \d+\.\d\d ± \d\.\d\d \| \d+\.\d\d ± \d\.\d\d \|$", report, re.M)  # val, test ± SE

    stamp = (out / "report.md").stat().st_mtime_ns
    assert main(["run", str(cfg), "--out", str(out)]) == 2  # nothing is overwritten
    assert (out / "report.md").stat().st_mtime_ns == stamp


def test_a_refused_command_leaves_the_recorded_config_alone_and_a_float_baseline_joins(tmp_path, capsys):
    cfg, out = _config(tmp_path), tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--set", "export.formats=[packed]"]) == 0
    recorded = (out / "config.yaml").read_bytes()
    refused = [
        ["run", "--resume", "--set", "space.weight_bits=[2,3,4]"],  # another supernet
        ["train", "--resume", "--set", "train.lr=0.5"],  # another training recipe
        ["train", "--resume", "--set", "data.mean=[0.5]"],  # other data: every stage compares the same list
        ["finetune", "--resume", "--set", "data.std=[0.5]"],
        ["search", "--resume", "--set", "data.mean=[0.5]"],
        ["search", "--set", "search.population=7"],  # a search is there
        ["finetune", "--pick", "99"],  # no such search result
        ["finetune", "--set", "finetune.lr=0.5"],  # the nets exist
    ]
    for command, *rest in refused:
        assert main([command, str(cfg), "--out", str(out), *rest]) == 2, (command, rest)
        assert (out / "config.yaml").read_bytes() == recorded, (command, rest)
    capsys.readouterr()
    assert main(["export", str(out), "--format", "packed"]) == 0  # the run still reads as itself

    assert "Float baseline" not in (out / "report.md").read_text()
    assert main(["float", str(cfg), "--out", str(out)]) == 0
    result = json.loads((out / "float" / "result.json").read_text())
    report = (out / "report.md").read_text()
    assert "## Float baseline" in report and f"test top-1 {100 * result['test_top1']:.2f} ± " in report, report
    stamp = (out / "float" / "model.pt").stat().st_mtime_ns
    assert main(["float", str(cfg), "--out", str(out)]) == 2  # a finished baseline is not overwritten
    assert main(["float", str(cfg), "--out", str(out), "--resume"]) == 0  # ... and kept with --resume
    assert (out / "float" / "model.pt").stat().st_mtime_ns == stamp


def test_run_exits_1_as_export_does_when_an_exported_file_fails_its_check(tmp_path, monkeypatch, capsys):
    """A script or CI job must not ship a failed export, whether it runs ``qspos run`` or resumes it."""
    real = FORMATS["packed"]
    failing = real._replace(check=lambda *a: dataclasses.replace(real.check(*a), ok=False))
    monkeypatch.setitem(FORMATS, "packed", failing)
    cfg, out = _config(tmp_path), tmp_path / "run"
    for resume in ([], ["--resume"]):
        assert main(["run", str(cfg), "--out", str(out), "--set", "export.formats=[packed]", *resume]) == 1
        assert "exported files disagree with PyTorch: w3a3 (packed)" in capsys.readouterr().err


def test_a_run_killed_after_the_search_resumes_without_retraining(tmp_path, capsys):
    cfg, out = _config(tmp_path), tmp_path / "run"
    proc = _qspos("run", str(cfg), "--out", str(out), "--set", "export.formats=[packed]")
    deadline = time.monotonic() + 300
    while not (out / "search" / "pareto.png").is_file():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.md").exists()
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("supernet.pt", "search/results.json")}

    assert main(["run", str(cfg), "--out", str(out), "--resume", "--set", "export.formats=[packed]"]) == 0
    log = capsys.readouterr().err
    assert "train: already done" in log and "search: already done" in log
    assert stamps == {p: (out / p).stat().st_mtime_ns for p in stamps}
    assert (out / "finetune" / "w3a3" / "model.pt").is_file() and (out / "report.md").is_file()


def test_run_on_a_converted_torchvision_model(tmp_path):
    """The whole pipeline on torchvision's MobileNetV2 (depthwise convs, linear bottlenecks,
    inverted residuals): converted from its graph, searched, fine-tuned, exported and checked."""
    cfg = tiny_config(population=4, iterations=1, mutation_count=2, crossover_count=2)
    cfg["model"] = {"name": "torchvision:mobilenet_v2", "num_classes": 4, "in_channels": 1, "input_size": 16,
                    "args": {"width_mult": 0.25}}
    cfg["data"].update(batch_size=16, synthetic_size=96, val_size=32)
    cfg.update(train={"max_steps": 4, "warmup_epochs": 0, "lr": 0.05, "threshold_init_batches": 1},
               finetune={"max_steps": 2}, export={"formats": ["onnx-qcdq", "packed"], "check_batch": 16})
    path = tmp_path / "mnv2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _qspos("run", str(path), "--out", str(tmp_path / "run"))
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log
    assert "model: stem features.0.0: 1 input channel(s) instead of 3" in log
    summary = json.loads((tmp_path / "run" / "export" / "w3a3" / "summary.json").read_text())
    assert summary["check_ok"] is True, summary
