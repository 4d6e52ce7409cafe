"""Fine-tuning and evaluation of standalone nets: inheritance from the supernet, outputs, resume."""

from __future__ import annotations

import json

import pytest
import torch

from qspos.core.arch import Arch
from qspos.errors import QsposError
from qspos.results.search_results import BudgetResult, Candidate, SearchResult, UniformBaseline
from qspos.runtime.build import build_supernet, load_finetuned, load_supernet
from qspos.runtime.checkpoint import load_checkpoint
from qspos.runtime.config import load_config
from qspos.runtime.data import DEBIAN_FASHION_MNIST, load_splits, make_loader, subset_in_memory
from qspos.runtime.evaluate import evaluate_top1, recalibrate_bn
from qspos.runtime.files import load_arch, write_json
from qspos.runtime.train_state import training_recipe
from qspos.runtime.trainer import fit
from qspos.stages.evaluate import evaluate_checkpoint
from qspos.stages.finetune import finetune, finetune_targets, init_model
from qspos.stages.train import train_supernet
from tests.helpers import make_run

CPU = torch.device("cpu")


def _calib(cfg, splits):
    images = subset_in_memory(splits.calib, cfg.search.calib_images, 32, cfg.data.split_seed)
    return make_loader(images, 32, shuffle=False)


def test_extracted_model_equals_the_supernet_path_before_finetuning(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb, ["space.weight_bits=[1,2,4]"])
    splits = load_splits(cfg.data, cfg.model)
    calib = _calib(cfg, splits)
    supernet = load_supernet(cfg, run_dir / "supernet.pt").eval()
    x = next(iter(make_loader(splits.val, 48, shuffle=False)))[0]
    for arch in [supernet.space.uniform(1, 2), *supernet.space.extremes()]:
        model = init_model(cfg, arch, run_dir, calib, CPU).eval()
        assert not any("Searchable" in type(m).__name__ or "Sliced" in type(m).__name__ for m in model.modules())
        supernet.set_arch(arch)
        recalibrate_bn(supernet, calib, CPU)
        with torch.no_grad():
            torch.testing.assert_close(model(x), supernet(x), rtol=0, atol=1e-5)


def _finetune_cfg(tmp_path, perturb, *overrides):
    cfg, run_dir = make_run(tmp_path, perturb, ["finetune.max_steps=2", "data.batch_size=16", *overrides])
    arch = build_supernet(cfg).space.uniform(2, 4)
    return cfg, run_dir, arch


def test_finetune_writes_the_net_its_arch_and_results_and_resume_keeps_them(tmp_path, perturb):
    cfg, run_dir, arch = _finetune_cfg(tmp_path, perturb)
    (res,) = finetune(cfg, run_dir, arch=arch)
    out = run_dir / "finetune" / f"arch-{arch.digest()}"
    assert res.dir == out and res.steps == 2 and res.arch == arch
    assert load_arch(out / "arch.yaml") == arch
    saved = load_checkpoint(out / "model.pt")
    assert Arch.from_dict(saved["arch"]) == arch and saved["complete"]
    result = json.loads((out / "result.json").read_text())
    for key in ("val_top1", "val_top5", "test_top1", "test_top5", "bitops", "size_bits", "macs"):
        assert result[key] is not None
    assert 0 <= result["test_top1"] <= result["test_top5"] <= 1

    evaluated = evaluate_checkpoint(cfg, out / "model.pt")
    assert evaluated.kind == "finetune" and evaluated.test_top1 == res.test_top1
    assert evaluated.bitops == res.bitops

    stamp = (out / "model.pt").stat().st_mtime_ns
    with pytest.raises(QsposError, match="--resume"):
        finetune(cfg, run_dir, arch=arch)
    (again,) = finetune(cfg, run_dir, arch=arch, resume=True)
    assert again.to_dict() == res.to_dict()
    assert (out / "model.pt").stat().st_mtime_ns == stamp


def _results(space, *budgets):
    """A search/results.json with two ranked archs and a uniform baseline per budget."""
    uniform = UniformBaseline(2, 2, True, 0.5, 1)
    best = [Candidate(space.uniform(4, 4), 0.9, 1, 1, 1, 1), Candidate(space.uniform(2, 4), 0.8, 1, 1, 1, 1)]
    return SearchResult([BudgetResult(b, {}, {}, best, uniform, None) for b in budgets], [], 4).to_dict()


def test_targets_are_each_budgets_pick_and_optionally_its_uniform_arch(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb)
    space = build_supernet(cfg).space
    write_json(run_dir / "search" / "results.json", _results(space, "b1", "b2"))
    targets = finetune_targets(cfg, run_dir, space)
    assert [t.name for t in targets] == ["b1", "b2"]
    assert targets[0].arch == space.uniform(4, 4) and targets[0].search_val_top1 == 0.9
    assert [t.name for t in finetune_targets(cfg, run_dir, space, pick=1)] == ["b1-1", "b2-1"]
    cfg_b = load_config(cfg, ["finetune.baselines=true"])
    with_uniform = finetune_targets(cfg_b, run_dir, space)
    assert [t.name for t in with_uniform] == ["b1", "b1-uniform", "b2", "b2-uniform"]
    assert with_uniform[1].arch == space.uniform(2, 2)
    with pytest.raises(QsposError, match="pick 2"):
        finetune_targets(cfg, run_dir, space, pick=2)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_finetune_improves_or_keeps_val_accuracy_on_real_fashion_mnist(tmp_path):
    """A briefly trained supernet's W4A4 net, fine-tuned for a few dozen steps on real data."""
    cfg = load_config({
        "name": "real",
        "model": {"name": "resnet_small", "num_classes": 10, "in_channels": 1, "input_size": 28,
                  "args": {"depth": 8, "widths": [8, 16, 16]}},
        "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
        "data": {"train_subset": 1536, "val_size": 400, "batch_size": 64, "eval_batch_size": 200},
        "train": {"max_steps": 6, "warmup_epochs": 0, "threshold_init_batches": 1},
        "search": {"calib_images": 128, "val_images": 200},
        "finetune": {"max_steps": 24, "lr": 0.1, "label_smoothing": 0.0},
    }, [f"runs_dir={tmp_path}"])
    train_supernet(cfg, cfg.run_dir)
    splits = load_splits(cfg.data, cfg.model)
    arch = build_supernet(cfg).space.uniform(4, 4)
    model = init_model(cfg, arch, cfg.run_dir, _calib(cfg, splits), CPU)
    val = make_loader(splits.val, 200, shuffle=False)
    before = evaluate_top1(model, val, CPU)[0]
    fit(model, splits.train, cfg.finetune, batch_size=64, seed=0, checkpoint=tmp_path / "ft.pt", fingerprint="t")
    after = evaluate_top1(model, val, CPU)[0]
    print(f"val top-1 before {before:.3f}, after {after:.3f}")
    assert after >= before, (before, after)


def test_a_resumed_finetune_ends_with_the_tensors_of_an_uninterrupted_one(tmp_path, perturb):
    """Loading a checkpoint must not swap the Brevitas quantizers' learned thresholds for new
    parameters the optimiser never sees, nor the fused kernels for stock ones."""
    cfg, run_dir, arch = _finetune_cfg(tmp_path, perturb, "finetune.max_steps=8", "finetune.checkpoint_every=3")
    splits = load_splits(cfg.data, cfg.model)

    def tune(path, resume=False, crash_at=None):
        model = init_model(cfg, arch, run_dir, _calib(cfg, splits), CPU)

        def before_step(step):
            if step == crash_at:
                raise KeyboardInterrupt

        fit(model, splits.train, cfg.finetune, batch_size=16, seed=0, checkpoint=path, fingerprint="ft",
            resume=resume, before_step=before_step)
        return model

    whole = tune(tmp_path / "whole.pt")
    with pytest.raises(KeyboardInterrupt):
        tune(tmp_path / "cut.pt", crash_at=5)
    assert load_checkpoint(tmp_path / "cut.pt")["step"] == 3
    resumed = tune(tmp_path / "cut.pt", resume=True)
    a, b = whole.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ: {differ[:5]}"
    fused = [type(m.tensor_quant).__name__ for m in resumed.modules() if hasattr(m, "tensor_quant")]
    assert fused == [type(m.tensor_quant).__name__ for m in whole.modules() if hasattr(m, "tensor_quant")]


def test_resume_refuses_to_keep_nets_tuned_with_other_settings(tmp_path, perturb):
    cfg, run_dir, arch = _finetune_cfg(tmp_path, perturb)
    (done,) = finetune(cfg, run_dir, arch=arch)
    with pytest.raises(QsposError, match="cannot resume .*train.pt: lr was 0.05, now 0.5"):
        finetune(load_config(cfg, ["finetune.lr=0.5"]), run_dir, arch=arch, resume=True)
    (again,) = finetune(cfg, run_dir, arch=arch, resume=True)  # the same settings: kept
    assert again.to_dict() == done.to_dict()


def test_a_net_fine_tuned_folded_trains_saves_and_loads_without_batchnorm(tmp_path, perturb):
    cfg, run_dir, arch = _finetune_cfg(tmp_path, perturb, "finetune.fold_bn=start")
    (res,) = finetune(cfg, run_dir, arch=arch)
    saved = load_checkpoint(res.dir / "model.pt")
    assert saved["deployment_outputs"] == ["layer1.0.conv2", "layer2.0.conv2", "layer2.0.downsample.0",
                                           "layer3.0.conv2", "layer3.0.downsample.0"]
    model, _ = load_finetuned(cfg, res.dir / "model.pt")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert evaluate_checkpoint(cfg, res.dir / "model.pt").test_top1 == res.test_top1
    (again,) = finetune(cfg, run_dir, arch=arch, resume=True)
    assert again.to_dict() == res.to_dict()
    with pytest.raises(QsposError, match="fold_bn was 'start', now 'after'|fold_bn"):
        finetune(load_config(cfg, ["finetune.fold_bn=after"]), run_dir, arch=arch, resume=True)


def test_the_default_fold_stays_out_of_the_recipe_so_older_nets_still_resume():
    cfg = load_config("configs/quickstart.yaml")
    assert "fold_bn" not in training_recipe(cfg.finetune, 16, 0, 100)
    assert training_recipe(load_config(cfg, ["finetune.fold_bn=start"]).finetune, 16, 0, 100)["fold_bn"] == "start"
