import pytest
import torch

import qspos
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.data import load_splits
from qspos.runtime.optim import MaskedSGD, param_groups
from qspos.runtime.sampler import PathSampler
from qspos.runtime.sandwich import Sandwich
from qspos.runtime.trainer import fit
from tests.helpers import train_config


class _Crashing(PathSampler):
    def __init__(self, space, crash_at=None):
        super().__init__(space, seed=0)
        self.calls, self.crash_at = 0, crash_at

    def __call__(self):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return super().__call__()


def _setup(*overrides):
    cfg = train_config("train.distill=inplace", "train.inplace_paths=1", *overrides)
    torch.manual_seed(0)
    supernet = build_supernet(cfg)
    return cfg, supernet


def _fit(path, crash_at=None, resume=False):
    cfg, supernet = _setup("train.max_steps=8", "train.checkpoint_every=4")
    sampler = _Crashing(supernet.space, crash_at)
    t = cfg.train
    sandwich = Sandwich(supernet, sampler, t.inplace_paths, t.label_smoothing, t.distill_temperature, t.distill_weight)
    fit(supernet, load_splits(cfg.data, cfg.model).train, t, batch_size=16, seed=0, checkpoint=path,
        fingerprint="f", resume=resume, before_step=sandwich.before_step, objective=sandwich,
        objects={"sampler": sampler})
    return supernet


def test_inplace_training_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    whole = _fit(tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):  # in step 6, after the step-4 checkpoint
        _fit(tmp_path / "b.pt", crash_at=6)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 4
    resumed = _fit(tmp_path / "b.pt", resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_sandwich_step_updates_exactly_what_its_paths_used():
    cfg, supernet = _setup("space.weight_bits=[2,3,4]", "train.inplace_paths=0")
    sandwich = Sandwich(supernet, PathSampler(supernet.space, 0), 0, 0.0, 2.0, 0.5)
    opt = MaskedSGD(param_groups(supernet, 5e-4), lr=0.1, momentum=0.9)
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    parts = sandwich.before_step(0)
    assert [a.digest() for a in sandwich.paths] == [a.digest() for a in supernet.space.extremes()[::-1]]
    x, y = next(iter(torch.utils.data.DataLoader(load_splits(cfg.data, cfg.model).train, batch_size=16)))
    loss, logits = sandwich(supernet, x, y, check=True)
    loss.backward()
    opt.step(parts)
    unused = 0
    for name, p in supernet.named_parameters():
        used = torch.zeros(p.shape, dtype=torch.bool)
        part = parts.get(p)
        used[part if part is not None else ...] = True
        assert torch.equal(p.detach()[~used], before[name][~used]), name
        unused += int((~used).sum())
    assert unused > 0  # the 3-bit thresholds: no path of the step used them
    assert logits.shape == (16, 4)


def test_inplace_refuses_a_callers_loss(tmp_path):
    cfg = train_config("train.distill=inplace", "train.max_steps=1")
    with pytest.raises(QsposError, match="inplace learns from the largest path's logits"):
        qspos.train_supernet(cfg, tmp_path / "run", loss=lambda model, batch: model(batch[0]).sum())
