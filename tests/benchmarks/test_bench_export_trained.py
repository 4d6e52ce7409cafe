"""The export benchmark of trained nets (``benchmarks/bench_export_trained.py``) and the deployment
rounding diagnosis (``benchmarks/bench_deploy_rounding.py``) at tiny size: a seed's fine-tuned net
is copied, exported and reported against its PyTorch net, and a complete work folder is not
exported again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from qspos.core import fold
from tests.benchmarks.seed_run import tiny_seed_run
from tests.formats.conftest import tiny_net

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_deploy_rounding as rounding  # noqa: E402
import bench_export_trained as bench  # noqa: E402


def test_a_seeds_nets_are_exported_and_compared_with_their_pytorch_nets(tmp_path, monkeypatch):
    seed, _, _, tuned = tiny_seed_run(tmp_path)
    work = tmp_path / "work"
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bench_export_trained.py", str(seed), "--work", str(work), "--name", "s0"])
    bench.main()
    result = json.loads((tmp_path / "results" / "s0.json").read_text())
    (row,) = result["nets"]
    assert row["net"] == "uniform-w2a2" and row["torch_test_top1"] == tuned.test_top1
    assert row["ok"] and result["qcdq_minus_torch"]["n"] == 1
    assert not (work / "finetune" / "uniform-w2a2" / "train.pt").exists()  # the training checkpoint stays
    summary = work / "export" / "uniform-w2a2" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    bench.main()
    assert summary.stat().st_mtime_ns == stamp

    monkeypatch.setattr(sys, "argv", ["bench_export_trained.py", str(seed), "--work", str(work), "--name", "s0",
                                      "--nets", "uniform-w2a2", "uniform-w3a3"])
    with pytest.raises(SystemExit, match="not fine-tuned .*: uniform-w3a3$"):
        bench.main()

    monkeypatch.setattr(rounding, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bench_deploy_rounding.py", str(seed), "uniform-w2a2"])
    rounding.main()
    (steps,) = json.loads((tmp_path / "results" / "deploy_rounding.json").read_text())["nets"]
    assert steps["fine-tuned"] == tuned.test_top1 and set(rounding.STEPS) <= set(steps)
    assert abs(steps["BN folded"] - steps["fine-tuned"]) <= 0.01  # folding keeps every code


def test_the_zero_channel_step_makes_a_dead_channels_bias_exact():
    _, model, _ = tiny_net(2, 4)
    block = model.layer1[0]
    with torch.no_grad():  # channel 0 of the first conv: codes all zero, BatchNorm variance near zero
        block.conv1.weight[0] = 0
        block.bn1.running_var[0], block.bn1.running_mean[0], block.bn1.bias[0] = 1e-6, 0.0, 0.3
        x = torch.rand(2, 4, 12, 12)
        out = fold.folded_int32(model).layer1[0].conv1(x)  # the rounding bench's zero-channel step
    assert torch.allclose(out[:, 0], torch.tensor(0.3))
