import math

import pytest
import torch

from qspos.cli import main
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, float_model
from qspos.runtime.checkpoint import atomic_save
from qspos.runtime.config import load_config
from qspos.runtime.data import load_splits
from qspos.runtime.rundir import RunDir
from qspos.runtime.teacher import Teacher, distill_loss, load_teacher, teacher_digest
from qspos.runtime.trainer import Objective, fit
from qspos.stages.float_baseline import train_float
from qspos.stages.train import train_supernet
from tests.helpers import TRAIN_CONFIG, train_config


def test_the_distillation_loss_is_hintons_on_a_tiny_example():
    student, teacher, label = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    # at T = 1 the teacher says (3/4, 1/4), the student (1/2, 1/2): KL = 3/4 ln 3/2 + 1/4 ln 1/2
    kl_1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distill_loss(student, teacher, label, 1.0, 1.0).item() == pytest.approx(kl_1, abs=1e-6)
    # at T = 2 the teacher's logits halve: p = sqrt 3 / (sqrt 3 + 1); the soft term is scaled by T^2
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl_2 = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    mixed = 0.25 * 4 * kl_2 + 0.75 * math.log(2)  # the hard term: cross-entropy of (1/2, 1/2) on label 0
    assert distill_loss(student, teacher, label, 2.0, 0.25).item() == pytest.approx(mixed, abs=1e-6)
    assert distill_loss(teacher, teacher, label, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def _teacher_file(cfg, tmp_path):
    """A 'pretrained' float net of the config's model, saved as a plain state dict."""
    model = float_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    path = tmp_path / "teacher.pt"
    atomic_save(model.state_dict(), path)
    return path, model


def test_fit_learns_from_a_teacher_that_it_never_updates(tmp_path):
    cfg = train_config()
    splits = load_splits(cfg.data, cfg.model)
    teacher = Teacher(float_model(cfg).eval().requires_grad_(False), 2.0, 0.5, "test", "d")
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student = float_model(cfg)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    fit(student, splits.train, load_config(cfg, ["train.distill=teacher"]).train, batch_size=16, seed=0,
        checkpoint=tmp_path / "s.pt", fingerprint="f", objective=Objective(0.1, teacher), recipe={"teacher": "d"})
    assert all(torch.equal(v, before[k]) for k, v in teacher.model.state_dict().items())  # buffers too
    assert not teacher.model.training
    assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_the_supernet_starts_from_the_teacher_and_records_it(tmp_path):
    cfg = train_config("train.max_steps=2", "train.init=teacher", "train.distill=teacher", "train.lr=1e-9",
                       "train.warmup_epochs=0")
    path, model = _teacher_file(cfg, tmp_path)
    cfg = load_config(cfg, [f"float.checkpoint={path}"])
    res = train_supernet(cfg, tmp_path / "run")
    trained = res.supernet.net.state_dict()
    for key, value in model.state_dict().items():  # every conv starts as the teacher's (lr ~ 0 since)
        if key.endswith("weight") and value.dim() == 4:
            torch.testing.assert_close(trained[key][tuple(slice(n) for n in value.shape)], value, atol=1e-6, rtol=0)
    saved = torch.load(tmp_path / "run" / "supernet.pt", weights_only=True)
    assert saved["recipe"]["teacher"] == teacher_digest(model) and saved["recipe"]["distill"] == "teacher"


def test_a_resume_with_another_teacher_is_refused(tmp_path):
    cfg = train_config("train.max_steps=2", "train.distill=teacher")
    path, _ = _teacher_file(cfg, tmp_path)
    train_supernet(load_config(cfg, [f"float.checkpoint={path}"]), tmp_path / "run")
    other = float_model(cfg)
    atomic_save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(QsposError, match="cannot resume .*teacher was"):
        train_supernet(load_config(cfg, [f"float.checkpoint={tmp_path / 'other.pt'}"]),
                       tmp_path / "run", resume=True)


def test_no_teacher_or_a_bad_teacher_file_is_one_line(tmp_path, capsys):
    cfg = train_config("train.max_steps=2", "train.distill=teacher")
    with pytest.raises(QsposError, match=r"no float teacher for this run: train one with 'qspos float"):
        train_supernet(cfg, tmp_path / "none")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(load_config(cfg, [f"float.checkpoint={bad}"]).to_yaml())
    assert main(["train", str(cfg_file), "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("qspos: error: ") and "bad.pt" in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_qspos_float_trains_the_teacher_with_its_own_recipe_or_keeps_a_pretrained_one(tmp_path):
    cfg = train_config("float.max_steps=3", "finetune.max_steps=1")
    trained = train_float(cfg, tmp_path / "trained")
    assert trained.steps == 3 and trained.source is None  # the float section's recipe, not finetune's
    assert (tmp_path / "trained" / "config.yaml").is_file()
    path, model = _teacher_file(cfg, tmp_path)
    kept = train_float(load_config(cfg, [f"float.checkpoint={path}"]), tmp_path / "kept")
    assert kept.steps == 0 and kept.source == str(path)
    copy = torch.load(tmp_path / "kept" / "float" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(copy[k], v) for k, v in model.state_dict().items())
    with pytest.raises(QsposError, match="holds the float net of"):
        train_float(cfg, tmp_path / "kept", resume=True)
    # the run's own float/ is the teacher when no checkpoint is named
    teacher = load_teacher(cfg, RunDir(tmp_path / "kept"), cfg.train, "cpu")
    assert teacher.digest == teacher_digest(model)


def test_a_float_net_of_another_model_is_not_taken_as_the_teacher(tmp_path):
    cfg = train_config("float.max_steps=1")
    train_float(cfg, tmp_path / "run")
    other = load_config(TRAIN_CONFIG, ["model.args.widths=[4, 8, 16]"])
    with pytest.raises(QsposError, match="is a float net of another model"):
        load_teacher(other, RunDir(tmp_path / "run"), other.train, "cpu")
    assert build_supernet(other) is not None
