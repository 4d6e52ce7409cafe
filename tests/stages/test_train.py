import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from qspos.cli import main
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, float_model, load_supernet
from qspos.runtime.config import load_config
from qspos.runtime.data import load_splits
from qspos.runtime.sampler import PathSampler
from qspos.runtime.train_watch import DivergedError
from qspos.runtime.trainer import fit
from qspos.stages.train import train_supernet
from tests.helpers import TRAIN_CONFIG, train_config

ROOT = Path(__file__).resolve().parents[2]  # the repository
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as conftest.py does in-process


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TRAIN_CONFIG))
    return path


def test_one_step_changes_only_the_active_path(tmp_path):
    cfg = train_config("train.max_steps=1", "train.threshold_init_batches=0")
    torch.manual_seed(cfg.seed)
    before = build_supernet(cfg)
    arch = PathSampler(before.space, cfg.seed)()  # the path of step 0
    assert any(c.width == 0.5 for c in arch.values()) and any(c.w_bits == 2 for c in arch.values())
    before.set_arch(arch)
    parts = before.active_slices()
    train_supernet(cfg, tmp_path)
    after = torch.load(tmp_path / "supernet.pt", weights_only=True)["model"]
    some_inactive = False
    for name, p in before.named_parameters():
        used = torch.zeros_like(p, dtype=torch.bool)
        used[parts.get(p, (...,))] = True
        moved = after[name] != p.detach()
        assert not (moved & ~used).any(), f"{name} changed outside the active path"
        some_inactive |= bool((~used).any())
        if name.endswith("conv1.weight") or name.endswith("fc.weight"):
            assert moved[used].any(), f"{name} did not train"
    assert some_inactive


def test_the_same_loop_fine_tunes_an_extracted_brevitas_net(tmp_path):
    cfg = train_config("train.max_steps=3")
    supernet = build_supernet(cfg)
    net = supernet.extract(supernet.space.extremes()[0])
    res = fit(net, load_splits(cfg.data, cfg.model).train, cfg.train, batch_size=16, seed=0,
              checkpoint=tmp_path / "ft.pt", fingerprint="static")
    assert res.steps == 3 and res.loss == res.loss  # not NaN
    assert torch.load(tmp_path / "ft.pt", weights_only=True)["complete"]


def test_checkpoint_is_a_supernet_and_bad_resumes_are_refused(tmp_path):
    cfg = train_config("train.max_steps=3")
    res = train_supernet(cfg, tmp_path)
    assert res.fit.steps == 3 and 0 <= res.val_top1_max <= 1 and 0 <= res.val_top1_min <= 1
    load_supernet(cfg, tmp_path / "supernet.pt")
    lines = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"event"' not in line]
    assert len(lines) == 2 and all('"stage": "train"' in line for line in lines)
    with pytest.raises(QsposError, match="another model"):
        train_supernet(train_config("train.max_steps=3", "space.width_multipliers=[0.5, 1.5]"), tmp_path, resume=True)
    with pytest.raises(QsposError, match="cannot resume .*: lr was 0.1, now 0.2"):
        train_supernet(train_config("train.max_steps=3", "train.lr=0.2"), tmp_path, resume=True)
    cfg_file, stamp = _config_file(tmp_path), (tmp_path / "supernet.pt").stat().st_mtime_ns
    assert main(["train", str(cfg_file), "--out", str(tmp_path), "--set", "train.max_steps=3"]) == 2
    assert (tmp_path / "supernet.pt").stat().st_mtime_ns == stamp


def _train(cfg_file: Path, out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "qspos", "train", str(cfg_file), "--out", str(out), *extra],
                            cwd=ROOT, env=ONE_THREAD, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=120) == 0, out.with_suffix(".log").read_text()[-2000:]


@pytest.mark.slow  # three processes (15 s on idle cores, 45 s on busy ones); the fast guard is
# tests/test_trainer.py::test_fit_resume_from_mid_epoch_is_exact
@pytest.mark.parametrize("distill", [False, True], ids=["labels", "distilled"])
def test_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, distill):
    cfg_file = _config_file(tmp_path)
    if distill:  # learning from a float teacher (float.checkpoint) as well as from the labels
        cfg = train_config()
        teacher = tmp_path / "teacher.pt"
        torch.save(float_model(cfg).state_dict(), teacher)
        cfg_file.write_text(load_config(cfg, ["train.distill=teacher", f"float.checkpoint={teacher}"]).to_yaml())
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = _train(cfg_file, whole)
    proc = _train(cfg_file, killed)
    ckpt = killed / "supernet.pt"
    deadline = time.monotonic() + 90
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)
    assert not state["complete"] and 0 < state["step"] < 84  # killed for real, mid-training
    _wait(_train(cfg_file, killed, "--resume"), killed)
    _wait(ref, whole)
    a, b = (torch.load(d / "supernet.pt", weights_only=True) for d in (whole, killed))
    assert a["complete"] and b["complete"] and a["step"] == b["step"] == 84
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])


WORKER = """
import sys
from pathlib import Path
import torch, torch.distributed as dist
from qspos.runtime.config import load_config
from qspos.stages.train import train_supernet
res = train_supernet(load_config(sys.argv[1], ["train.max_steps=6"]), Path(sys.argv[2]))
params = {n: p.detach() for n, p in res.supernet.named_parameters()}
torch.save(params, Path(sys.argv[2]) / f"rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "ddp"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(_config_file(tmp_path)), str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[:6000]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2))
    saved = torch.load(out / "supernet.pt", weights_only=True)
    assert saved["complete"] and saved["step"] == 6
    for name, p in r0.items():
        assert torch.equal(p, r1[name]), name
        assert torch.equal(p, saved["model"][name]), name


@pytest.mark.parametrize("override, message", [
    ("train.lr=0", "train.lr: must be positive"),
    ("train.momentum=1.0", "train.momentum: must be in"),
    ("train.max_steps=0", "train.max_steps: must be positive"),
    ("train.sampling=budget", "train.sampling_budget: sampling 'budget' needs a budget"),
    ("train.threshold_init_batches=-1", "train.threshold_init_batches: must be >= 0"),
])
def test_bad_train_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(QsposError, match=message):
        train_config(override)


def test_exponent_without_a_dot_is_a_float():
    assert train_config("train.weight_decay=5e-5").train.weight_decay == 5e-5  # YAML 1.1 reads it as text


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_divergence_stops_training_and_no_checkpoint_holds_non_finite_weights(tmp_path, backend):
    cfg = train_config("train.lr=1e6", f"quant.backend={backend}", "train.checkpoint_every=2",
                       "train.log_every=2", "train.warmup_epochs=0")
    with pytest.raises(DivergedError, match=r"supernet: training diverged at step \d+ .*lower the learning rate"):
        train_supernet(cfg, tmp_path)
    ckpt = tmp_path / "supernet.pt"
    if ckpt.exists():  # the last good checkpoint, never a later one
        state = torch.load(ckpt, weights_only=True)
        assert not state["complete"]
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow  # one torch.compile of the tiny supernet: about half a minute on 2 cores
def test_compiled_training_compiles_once_for_every_path(tmp_path, monkeypatch):
    import torch._dynamo

    from qspos.runtime.sampler import PathSampler

    torch._dynamo.reset()
    graphs, draw = [], PathSampler.__call__

    def counted(sampler):  # before each step: the graphs compiled so far
        graphs.append(int(torch._dynamo.utils.counters["stats"]["unique_graphs"]))
        return draw(sampler)

    monkeypatch.setattr(PathSampler, "__call__", counted)
    res = train_supernet(train_config("train.compile=true", "train.max_steps=12"), tmp_path)
    assert res.fit.steps == 12 and 0 <= res.val_top1_max <= 1
    assert len(set(graphs[1:])) == 1 and graphs[1] > 0, graphs  # compiled in step 1, never again
    state = torch.load(tmp_path / "supernet.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["recipe"]["compile"] is True  # a resume must not switch it


def test_labels_beyond_the_models_outputs_are_refused_before_anything_is_written(tmp_path):
    """A dataset with more classes than ``model.num_classes``: one line at the first step, not
    the loss's IndexError, and the run directory holds nothing (no config.yaml, no metrics)."""
    import qspos
    from tests.helpers import tiny_config

    cfg = tiny_config()
    cfg["data"]["batch_size"] = 16
    cfg.update(train={"epochs": 1, "warmup_epochs": 0})
    x = torch.randn(64, 1, 12, 12)
    data = torch.utils.data.TensorDataset(x, torch.arange(64) % 7)  # 7 classes; the model has 4 outputs
    with pytest.raises(QsposError, match="the data holds label [4-6], but the model has 4 outputs"):
        qspos.train_supernet(cfg, tmp_path / "run", train=data, val=data)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))
