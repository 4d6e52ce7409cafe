import torch
from torch import nn

from qspos.runtime.optim import MaskedSGD, union_parts


def _param_and_optimizer():
    p = nn.Parameter(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)))
    return p, MaskedSGD([{"params": [p], "weight_decay": 0.1}], lr=0.1, momentum=0.9, nesterov=True)


def test_paths_that_agree_keep_their_index_and_a_whole_use_wins():
    p, q = nn.Parameter(torch.zeros(3, 5)), nn.Parameter(torch.zeros(4))
    union = union_parts([{p: (1, slice(0, 2)), q: None}, {p: (1, slice(0, 2)), q: (slice(0, 2),)}])
    assert union[p] == (1, slice(0, 2)) and union[q] is None
    assert union_parts([{p: (0, slice(0, 2))}, {}])[p] is None  # a path that does not list p uses all of it


def test_paths_that_differ_update_exactly_the_elements_any_of_them_used():
    p, opt = _param_and_optimizer()
    union = union_parts([{p: (0, slice(0, 2))}, {p: (2, slice(0, 4))}, {p: (0, slice(0, 1))}])
    mask = union[p]
    assert isinstance(mask, torch.Tensor) and mask.sum() == 6 and mask[0, :2].all() and mask[2, :4].all()
    refs = [(idx, *_param_and_optimizer()) for idx in ((0, slice(0, 2)), (2, slice(0, 4)))]
    before = p.detach().clone()
    for _ in range(2):  # the second step has momentum
        p.grad = torch.ones_like(p)
        opt.step(union)
        for idx, ref, ref_opt in refs:  # the same arithmetic on a view of one part
            ref.grad = torch.ones_like(ref)
            ref_opt.step({ref: idx})
    for idx, ref, _ in refs:
        assert torch.equal(p.detach()[idx], ref.detach()[idx])
    assert torch.equal(p.detach()[~mask], before[~mask])  # the rest, exactly unchanged
    assert not opt.state[p]["momentum_buffer"][~mask].any()
