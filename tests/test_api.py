"""The Python API: the stages as functions taking a dict (or Config), returning result objects."""

from __future__ import annotations

import importlib
import json
import random

import onnxruntime
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import qspos
from qspos.core.layers import SearchableLayer
from qspos.errors import QsposError
from qspos.stages.evaluate import EvalResult
from qspos.stages.export import ExportResult
from qspos.stages.finetune import FinetuneResult
from qspos.stages.run import RunResult
from qspos.stages.search import SearchResult
from qspos.stages.train import TrainResult
from tests.helpers import tiny_config


def test_stages_take_a_dict_and_return_result_objects(tmp_path):
    cfg = tiny_config(population=6, iterations=1, mutation_count=3, crossover_count=3)
    cfg["data"]["batch_size"] = 16
    cfg.update(train={"epochs": 1, "warmup_epochs": 0}, finetune={"max_steps": 2})
    run_dir = tmp_path / "run"

    trained = qspos.train_supernet(cfg, run_dir)
    assert isinstance(trained, TrainResult) and (run_dir / "config.yaml").is_file()
    found = qspos.search(cfg, run_dir)
    assert isinstance(found, SearchResult) and [b.name for b in found.budgets] == ["w3a3"]
    (net,) = qspos.finetune(cfg, run_dir)
    assert isinstance(net, FinetuneResult) and net.name == "w3a3" and net.arch == found.best("w3a3")
    evaluated = qspos.evaluate(cfg, net.dir / "model.pt")
    assert isinstance(evaluated, EvalResult) and evaluated.test_top1 == net.test_top1
    (exported,) = qspos.export(run_dir, ["packed"])
    assert isinstance(exported, ExportResult) and exported.packed_bytes > 0

    again = qspos.run(qspos.load_config(cfg), run_dir, resume=True)  # everything done: all skipped
    assert isinstance(again, RunResult) and again.train is None
    assert [r.to_dict() for r in again.finetune] == [net.to_dict()]
    assert again.report is not None and again.report.is_file()


def test_stage_names_on_the_package_are_functions_and_the_submodules_still_import():
    assert all(callable(getattr(qspos, n)) for n in ("train_supernet", "search", "finetune", "export", "run"))
    assert importlib.import_module("qspos.stages.search").SearchResult is SearchResult


# ---------------------------------------------------------------------------- objects in


def _images(n: int, seed: int, dense: bool = False) -> TensorDataset:
    """Synthetic 12x12 grey images: a 4-class rule, or (dense) a smoothing target per pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    if dense:
        return TensorDataset(x, nn.functional.avg_pool2d(x, 3, 1, 1))
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :6].mean((1, 2, 3)) > 0).long())


def _cnn(out: int, head: str) -> nn.Module:
    """A user's plain CNN; ``head`` 'linear' (classifier) or 'conv' (dense prediction)."""
    torch.manual_seed(0)
    body = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    if head == "linear":
        return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, out))
    return nn.Sequential(*body, nn.Conv2d(16, out, 3, padding=1))


_SECTIONS = {  # no model and no data section: the objects give them
    "name": "objects",
    "space": {"weight_bits": [2, 4], "act_bits": [4, 8], "width_multipliers": [0.5, 1.0]},
    "train": {"max_steps": 6, "warmup_epochs": 0, "lr": 0.05, "threshold_init_batches": 1},
    "search": {"budgets": [{"name": "w3a6", "bitops": "uniform 3,6"}], "population": 4, "iterations": 1, "topk": 2,
               "mutation_count": 2, "crossover_count": 2, "calib_images": 32, "random_baseline": False},
    "finetune": {"max_steps": 3},
    "export": {"formats": ["onnx-qcdq"], "check_batch": 16},
}


def test_a_pipeline_from_objects_only(tmp_path):
    model = _cnn(4, "linear")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = tmp_path / "run"
    res = qspos.run(_SECTIONS, run_dir, model=model, train=DataLoader(_images(128, 0), batch_size=16),
                    val=_images(32, 1), test=_images(32, 2))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the user's model is untouched
    (net,) = res.finetune
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["model"]["name"] == "object:torch.nn.modules.container.Sequential"
    assert recorded["data"]["batch_size"] == 16 and recorded["model"]["input_size"] == 12
    assert recorded["data"]["dataset"] == "objects"

    # .model is the standalone Brevitas module; the exported QCDQ file holds its deployment form (BatchNorm
    # folded, int32 biases), which it matches in onnxruntime, as written and optimised, on every checked image
    assert not any(isinstance(m, SearchableLayer) for m in net.model.modules())
    x = _images(16, 3).tensors[0]
    with torch.no_grad():
        ours = net.model.eval()(x)
    session = onnxruntime.InferenceSession(str(run_dir / "export" / net.name / "model_qcdq.onnx"))
    assert session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].shape == tuple(ours.shape)
    qcdq = json.loads((run_dir / "export" / net.name / "summary.json").read_text())["checks"]["onnx-qcdq"]
    assert qcdq["ok"] and qcdq["matching"] == qcdq["optimized_matching"] == 1.0

    # load_quantized rebuilds it bit for bit from state dict + arch + model spec
    again = qspos.load_quantized(run_dir, net.name, model=model)
    with torch.no_grad():
        assert torch.equal(again(x), ours)
    for (k, a), (k2, b) in zip(again.state_dict().items(), net.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    with pytest.raises(QsposError, match=r"passed as an object \(torch.nn.modules.container.Sequential\): pass "
                                         r"the same model again \(model=...\)"):
        qspos.load_quantized(run_dir, net.name)
    with pytest.raises(QsposError, match="no fine-tuned net 'w9'.*finished ones: w3a6"):
        qspos.load_quantized(run_dir, "w9", model=model)
    with pytest.raises(QsposError, match="data was passed as objects: pass the same train=, val= and test="):
        qspos.export(run_dir, ["onnx-qcdq"], model=model)

    # layers.json: the user's module names -> the chosen precision and channels
    layers = json.loads((run_dir / "finetune" / net.name / "layers.json").read_text())
    assert list(layers) == ["0", "3", "8"]
    assert layers["0"]["w_bits"] == 8 and not layers["0"]["searched"]  # the fixed first layer
    choice = net.arch["3"]
    assert (layers["3"]["w_bits"], layers["3"]["a_bits"]) == (choice.w_bits, choice.a_bits)
    assert layers["3"]["out_channels"] == (16 if choice.width == 1.0 else 8) == layers["8"]["in_channels"]


def test_a_dense_prediction_task_with_its_own_loss_and_score(tmp_path, capsys):
    """Not classification: a per-pixel regression trained with MSE and searched by -MSE."""
    calls = {"loss": 0, "score": 0}

    def loss(model, batch):
        calls["loss"] += 1
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def neg_mse(model, loader):
        calls["score"] += 1
        device = next(model.parameters()).device  # a common line: the score sees real modules only
        errors = [nn.functional.mse_loss(model(x.to(device)), y.to(device)).item() for x, y in loader]
        return -sum(errors) / len(errors)

    res = qspos.run(_SECTIONS, tmp_path / "run", model=_cnn(1, "conv"),
                    train=DataLoader(_images(128, 0, dense=True), batch_size=16),
                    val=_images(32, 1, dense=True), test=_images(32, 2, dense=True), loss=loss, score=neg_mse)
    (net,) = res.finetune
    assert calls["loss"] == 6 + 3  # every supernet and fine-tuning step
    assert calls["score"] >= 4  # every candidate of the search, and the fine-tuned net's splits
    assert net.test_top1 < 0 and net.val_top1 < 0 and net.test_top5 is None  # the score stands in for top-1
    with torch.no_grad():
        assert net.model(_images(2, 3, dense=True).tensors[0]).shape == (2, 1, 12, 12)
    found = res.search.budgets[0]
    assert all(c.val_top1 <= 0 for c in found.best)
    summary = json.loads((tmp_path / "run" / "export" / net.name / "summary.json").read_text())
    check = summary["checks"]["onnx-qcdq"]  # judged by its outputs against PyTorch's, not by the score
    assert summary["check_ok"] is True and check["matching"] >= 0.95 and check["test_top1"] is None

    # the score is named and shown as it is: not as a top-1 in %, with no binomial error, and no
    # "top1 nan%" for the training top-1 a caller's loss does not give
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["score"] == "neg_mse"
    out = capsys.readouterr()
    assert "nan" not in out.out + out.err and "val neg_mse" in out.out and "best -0.0" in out.err
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"| searched `{found.best[0].digest}` " in report and "±" not in report and "Accuracies" not in report
    assert f"| {net.val_top1:.4g} | {net.test_top1:.4g} |" in report and "val neg_mse after BN" in report
    pareto = (tmp_path / "run" / "search" / "pareto.md").read_text()
    assert "val neg_mse |" in pareto and "%" not in pareto


def test_the_low_level_api_for_a_custom_loop():
    sn = qspos.Supernet.from_model(_cnn(4, "linear"), {"weight_bits": [2, 4], "act_bits": [2, 4],
                                                       "width_multipliers": [0.5, 1.0]}, input_shape=(1, 12, 12))
    assert sn.space.names == ["3"] and sn.space.size == 8
    arch = sn.space.sample(random.Random(0))
    sn.set_arch(arch)
    sn(torch.randn(2, 1, 12, 12)).sum().backward()
    cost = sn.cost(arch)
    choice = arch["3"]
    inner = 16 if choice.width == 1.0 else 8
    conv3 = 12 * 12 * inner * 8 * 9
    assert cost.layers[1].macs == conv3 and cost.layers[1].bitops == conv3 * choice.w_bits * choice.a_bits
    net = sn.extract(arch).eval()
    sn.eval()
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(net(x), sn(x))
    seen = []

    def score(a):
        seen.append(a)
        return -sn.cost(a).bitops

    ranked = qspos.evolve(sn, score, {"bitops": "uniform 3,3"}, population=4, iterations=2, topk=2,
                          mutation_count=2, crossover_count=2)
    limit = sn.cost(sn.space.uniform(3, 3)).bitops
    assert len(ranked) == len(seen) and all(sn.cost(a).bitops <= limit for a, _ in ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    with pytest.raises(QsposError, match="search.population: must be >= 1, got 0"):
        qspos.evolve(sn, score, {"bitops": "uniform 3,3"}, population=0)
