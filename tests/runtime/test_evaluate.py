import torch
from torch import nn
from torch.utils.data import TensorDataset

from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.runtime.evaluate import CandidateEvaluator, evaluate_top1, fixed_batches, recalibrate_bn
from tests.helpers import tiny_config


def _threshold_task(n: int = 512, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """x ~ N(5, 3^2); the label says whether x is above its mean: right only with true BN stats."""
    g = torch.Generator().manual_seed(seed)
    x = 5 + 3 * torch.randn(n, 1, 1, 1, generator=g)
    y = (x.flatten() > 5).long()
    return list(zip(x.split(128), y.split(128)))


def _threshold_model() -> nn.Module:
    fc = nn.Linear(1, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        fc.bias.zero_()
    return nn.Sequential(nn.BatchNorm2d(1), nn.Dropout(0.5), nn.Flatten(), fc)


def test_recalibration_replaces_stale_stats_and_restores_accuracy():
    model = _threshold_model()
    data = _threshold_task()
    stale, _ = evaluate_top1(model, data, "cpu")  # running stats (0, 1) put every x in class 1
    assert stale < 0.7

    model.train()
    model[1].eval()  # a mixed mode that must come back as it was
    recalibrate_bn(model, data, "cpu")

    bn = model[0]
    x = torch.cat([b[0] for b in data]).flatten()
    assert abs(bn.running_mean.item() - x.mean().item()) < 1e-4  # cumulative average, equal batches
    assert abs(bn.running_var.item() - 9) < 1.5
    assert bn.momentum == 0.1
    assert model.training and bn.training and not model[1].training
    fresh, _ = evaluate_top1(model, data, "cpu")
    assert fresh > 0.97
    assert model.training  # evaluate_top1 restores the mode too


def test_top5_counts_any_of_the_first_k():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    model = nn.Identity()
    top1, top5 = evaluate_top1(model, [(logits, torch.tensor([2, 2]))], "cpu")
    assert (top1, top5) == (0.5, 1.0)  # 3 classes: top-k with k = 3


def test_supernet_path_recalibration_changes_only_active_channels():
    cfg = load_config(tiny_config())
    supernet = build_supernet(cfg)
    small = supernet.space.extremes()[0]
    supernet.set_arch(small)
    x = torch.randn(64, 1, 12, 12) * 2 + 1
    recalibrate_bn(supernet, [(x, torch.zeros(64, dtype=torch.long))], "cpu")
    bn = supernet.net.layer1[0].bn1
    k = int(bn.num_active)
    assert k < bn.num_features
    assert bn.running_mean[:k].abs().sum() > 0
    assert torch.all(bn.running_mean[k:] == 0) and torch.all(bn.running_var[k:] == 1)


def test_cache_hits_skip_evaluation():
    cfg = load_config(tiny_config())
    supernet = build_supernet(cfg)
    data = fixed_batches(TensorDataset(torch.randn(40, 1, 12, 12), torch.randint(0, 4, (40,))), None, 16, seed=0)
    assert [len(b[0]) for b in data] == [16, 16, 8]
    ev = CandidateEvaluator(supernet, data, data, "cpu")
    calls = []
    evaluate = ev.evaluate
    ev.evaluate = lambda arch: calls.append(arch) or evaluate(arch)
    lo, hi = supernet.space.extremes()
    first = ev([lo, hi, lo])
    assert len(calls) == 2 and ev.computed == 2 and first[0] == first[2]
    again = ev([hi, lo])
    assert len(calls) == 2 and again == [first[1], first[0]]
    assert set(ev.cache) == {lo.digest(), hi.digest()}
