import random

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, float_model
from qspos.runtime.checkpoint import python_rng_state, set_python_rng_state
from qspos.runtime.config import OptimConfig
from qspos.runtime.distributed import Dist
from qspos.runtime.optim import MaskedSGD, lr_factor, make_optimizer, param_groups
from qspos.runtime.sampler import PathSampler
from qspos.runtime.sandwich import Sandwich
from qspos.runtime.teacher import Teacher
from qspos.runtime.train_state import TrainState
from qspos.runtime.train_watch import DivergedError
from qspos.runtime.trainer import Objective, epoch_order, fit, train_step
from tests.helpers import count_host_reads, train_config


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


class _Noisy(TensorDataset):
    """Augments with the global torch RNG, as the real datasets do with workers=0."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn_like(x), y


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return _Noisy(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _optim(**kw):
    return OptimConfig(**{"epochs": 2, "lr": 0.05, "warmup_epochs": 0.5, "log_every": 3, "checkpoint_every": 4,
                          **kw})


def test_masked_sgd_without_parts_is_torch_sgd():
    a, b = _net(), _net()
    opt_a = MaskedSGD(param_groups(a, 1e-3), lr=0.1, momentum=0.9, nesterov=True)
    opt_b = torch.optim.SGD(param_groups(b, 1e-3), lr=0.1, momentum=0.9, nesterov=True)
    x, y = _data().tensors
    for _ in range(3):
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


def test_masked_sgd_leaves_the_unused_part_exactly_unchanged():
    p = nn.Parameter(torch.randn(3, 5))
    opt = MaskedSGD([{"params": [p], "weight_decay": 0.1}], lr=0.1, momentum=0.9, nesterov=True)
    before = p.detach().clone()
    for row in (0, 1):  # momentum from the row-0 step must not move row 0 in the row-1 step
        p.grad = torch.ones_like(p)
        opt.step({p: (row, slice(0, 2))})
    changed = p.detach() != before
    assert changed[0, :2].all() and changed[1, :2].all()
    assert not changed[:, 2:].any() and not changed[2].any()
    row0_after_first = before[0, :2] - 0.1 * ((1 + 0.1 * before[0, :2]) * 1.9)
    torch.testing.assert_close(p.detach()[0, :2], row0_after_first)
    assert not opt.state[p]["momentum_buffer"][1:, 2:].any()


def test_weight_decay_only_on_conv_and_linear_weights():
    decay, no_decay = param_groups(_net(), 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
    assert [p.dim() for p in decay["params"]] == [4, 2]  # conv and linear weights
    assert len(no_decay["params"]) == 4  # their biases and the BN affine parameters


def test_schedule_warmup_then_decay_to_zero():
    assert lr_factor(0, 10, 2, "cosine") == 0.5 and lr_factor(1, 10, 2, "cosine") == 1.0
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(9, 10, 2, "linear") == pytest.approx(1 / 8)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)


def test_epoch_order_is_a_function_of_seed_and_epoch_and_splits_over_ranks():
    assert epoch_order(50, 8, 0, 3) == epoch_order(50, 8, 0, 3)
    assert epoch_order(50, 8, 0, 3) != epoch_order(50, 8, 0, 4) != epoch_order(50, 8, 1, 3)
    full = epoch_order(50, 8, 0, 3)
    assert len(full) == 48 and len(set(full)) == 48  # the incomplete last batch is dropped
    ranks = [epoch_order(50, 8, 0, 3, Dist(r, 2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(full)
    assert ranks[0][:4] + ranks[1][:4] == full[:8]  # each global batch is shared between the ranks


def test_fit_trains_checkpoints_and_refuses_to_overwrite(tmp_path):
    net, ckpt = _net(), tmp_path / "ckpt.pt"
    res = fit(net, _data(), _optim(), batch_size=16, seed=0, checkpoint=ckpt, fingerprint="f")
    assert (res.steps, res.epochs) == (8, 2.0) and 0 <= res.top1 <= 1
    state = torch.load(ckpt, weights_only=True)
    assert state["complete"] and state["step"] == 8 and state["fingerprint"] == "f"
    with pytest.raises(QsposError, match="already exists"):
        fit(_net(), _data(), _optim(), batch_size=16, seed=0, checkpoint=ckpt, fingerprint="f")
    # resuming a finished run changes nothing
    again = fit(_net(), _data(), _optim(), batch_size=16, seed=0, checkpoint=ckpt, fingerprint="f", resume=True)
    assert again.steps == 8 and again.images_per_s == 0
    assert torch.load(ckpt, weights_only=True)["rng"][0]["torch"].equal(state["rng"][0]["torch"])


class _ChannelSampler:
    """Updates a random number of the conv's output channels per step (a stand-in for a path
    sampler): its RNG must ride in the checkpoint for a resume to be exact."""

    def __init__(self, net, crash_at=None):
        self.conv, self.rng, self.crash_at = net[0], random.Random(0), crash_at

    def __call__(self, step):
        if step == self.crash_at:
            raise KeyboardInterrupt
        return {self.conv.weight: (slice(self.rng.randint(1, 4)),)}

    def state_dict(self):
        return {"rng": python_rng_state(self.rng)}

    def load_state_dict(self, state):
        set_python_rng_state(self.rng, state["rng"])


def _teacher():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval().requires_grad_(False)
    return Teacher(net, 2.0, 0.5, "test", "t")


def _fit_sampled(net, sampler, path, resume=False, teacher=None):
    optim = _optim(distill="teacher" if teacher else "none")
    return fit(net, _data(), optim, batch_size=16, seed=0, checkpoint=path, fingerprint="f", resume=resume,
               before_step=sampler, objects={"sampler": sampler}, objective=Objective(optim.label_smoothing, teacher))


@pytest.mark.parametrize("teacher", [None, _teacher()], ids=["labels", "distilled"])
def test_fit_resume_from_mid_epoch_is_exact(tmp_path, teacher):
    full = _net()
    _fit_sampled(full, _ChannelSampler(full), tmp_path / "a.pt", teacher=teacher)
    crashed = _net()
    with pytest.raises(KeyboardInterrupt):  # after the step-4 checkpoint, in the middle of epoch 2
        _fit_sampled(crashed, _ChannelSampler(crashed, crash_at=6), tmp_path / "b.pt", teacher=teacher)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 4
    torch.manual_seed(123)  # the global RNG (augmentation) must come back from the checkpoint
    part = _net()
    sampler = _ChannelSampler(part)
    sampler.rng.seed(99)  # and so must the sampler's
    _fit_sampled(part, sampler, tmp_path / "b.pt", resume=True, teacher=teacher)
    for a, b in zip(full.state_dict().values(), part.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_another_recipe_or_model(tmp_path):
    ckpt = tmp_path / "c.pt"
    fit(_net(), _data(), _optim(max_steps=2), batch_size=16, seed=0, checkpoint=ckpt, fingerprint="f")
    with pytest.raises(QsposError, match="lr was 0.05, now 0.1"):
        fit(_net(), _data(), _optim(max_steps=2, lr=0.1), batch_size=16, seed=0, checkpoint=ckpt,
            fingerprint="f", resume=True)
    with pytest.raises(QsposError, match="another model"):
        fit(_net(), _data(), _optim(max_steps=2), batch_size=16, seed=0, checkpoint=ckpt, fingerprint="g",
            resume=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(QsposError, match="cannot read checkpoint"):
        fit(_net(), _data(), _optim(max_steps=2), batch_size=16, seed=0, checkpoint=ckpt, fingerprint="f",
            resume=True)


def test_batch_larger_than_the_data_is_an_error(tmp_path):
    with pytest.raises(QsposError, match="larger than the training split"):
        fit(_net(), _data(8), _optim(), batch_size=16, seed=0, checkpoint=tmp_path / "x.pt", fingerprint="f")


@pytest.mark.parametrize("epochs, warned", [(1e9, True), (10_000, False)])
def test_an_endless_training_starts_with_a_warning(tmp_path, capsys, epochs, warned):
    """``epochs: 1e9`` is accepted (nothing is wrong with it but its length), with a warning."""

    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_net(), _data(), _optim(epochs=epochs), batch_size=16, seed=0, checkpoint=tmp_path / "x.pt",
            fingerprint="f", desc="supernet", before_step=stop)
    err = capsys.readouterr().err
    assert ("warning: supernet: 1e+09 epochs (4,000,000,000 steps)" in err) is warned, err


class _PoisonedAt(_Noisy):
    """Hands out a non-finite image as the first item of step ``step`` (0-based, batch 16)."""

    def __init__(self, data, step, value):
        super().__init__(*data.tensors)
        self.calls, self.at, self.value = 0, 16 * step, value

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        self.calls += 1
        return (torch.full_like(x, self.value) if self.calls - 1 == self.at else x), y


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    """Step 6 sees a non-finite image, so its loss is not finite; the log at step 6 stops
    training before the step-8 checkpoint could take in the poisoned weights."""
    ckpt = tmp_path / "c.pt"
    with pytest.raises(DivergedError, match=r"train: training diverged at step 6 \(the loss is not finite\)"):
        fit(_net(), _PoisonedAt(_data(), 5, bad), _optim(log_every=1), batch_size=16, seed=0, checkpoint=ckpt,
            fingerprint="f")
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("distill", ["none", "teacher", "inplace"])
def test_a_training_step_of_the_loop_reads_nothing_back_to_the_host(distill):
    """``train_step`` as ``fit`` runs it, with what the supernet stage hands it: a sampled path,
    or the sandwich rule's paths; the teacher's forward included."""
    cfg = train_config(f"train.distill={distill}")
    torch.manual_seed(0)
    supernet = build_supernet(cfg).train()
    opt, sched = make_optimizer(supernet, cfg.train, total_steps=10, warmup_steps=2)
    state = TrainState(supernet, opt, sched, torch.amp.GradScaler("cuda", enabled=False))
    sampler = PathSampler(supernet.space, 0)
    t = cfg.train
    if distill == "inplace":
        sandwich = Sandwich(supernet, sampler, t.inplace_paths, t.label_smoothing, t.distill_temperature,
                            t.distill_weight)
        before_step, objective = sandwich.before_step, sandwich
    else:
        teacher = Teacher(float_model(cfg).eval(), 2.0, 0.5, "test", "t") if distill == "teacher" else None
        objective = Objective(t.label_smoothing, teacher)

        def before_step(step):
            supernet.set_arch(sampler())
            return supernet.active_slices()
    x, y = torch.randn(8, *cfg.input_shape), torch.randint(0, cfg.model.num_classes, (8,))
    train_step(state, supernet, objective, x, y, before_step(0), check=True)  # the first step checks labels
    for step in range(1, 4):
        with count_host_reads() as counts:
            train_step(state, supernet, objective, x, y, before_step(step))
        assert dict(counts) == {}, step
    assert state.step == 4
