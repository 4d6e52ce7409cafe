"""What every format's check shares: the paired top-1 rule, the noise floor, and a file that
computes something else failing its check."""

from __future__ import annotations

import shutil

import onnx
import pytest
import torch

from qspos.formats.check import MATCHING_SHARE, paired_change, top1_consistent
from qspos.formats.registry import FORMATS


def test_the_qcdq_top1_rule_is_a_paired_test_on_the_images_one_net_alone_gets_right():
    """Issue 29: 'within 0.1 point' means nothing on a few hundred test images (one image of 160 is
    0.6 points). Both nets see the same images, so a file that differs by noise alone wins or loses
    each discordant image at even odds (McNemar): its change is judged against sqrt(discordant)."""
    g = torch.Generator().manual_seed(0)
    torch_hit = torch.rand(1000, generator=g) < 0.6
    file_hit = torch_hit ^ (torch.rand(1000, generator=g) < 0.05)  # noise: ~50 images flipped either way
    change, discordant = paired_change(torch_hit, file_hit)
    assert change == int(file_hit.sum()) - int(torch_hit.sum())  # exactly the top-1 difference times the images
    assert discordant == int((file_hit != torch_hit).sum()) > 30 and top1_consistent(change, discordant)
    one_off = torch_hit[:160].clone()
    one_off[0] = ~one_off[0]
    assert paired_change(torch_hit[:160], one_off) in {(1, 1), (-1, 1)} and top1_consistent(*paired_change(
        torch_hit[:160], one_off))
    # the bound is 3 standard deviations: |change| <= 3 sqrt(discordant)
    assert top1_consistent(0, 0) and top1_consistent(9, 9) and top1_consistent(-12, 16) and top1_consistent(12, 20)
    assert not top1_consistent(-10, 10) and not top1_consistent(-13, 18) and not top1_consistent(1, 0)
    wrong = torch.arange(1000) % 10 == 0  # a file that puts every image in one class: right on 10%
    assert not top1_consistent(*paired_change(torch_hit, wrong))


def _negate_logits(path):
    """A deliberate mismatch: the file's graph with its output negated."""
    model = onnx.load(path)
    graph = model.graph
    out = graph.output[0].name
    producer = next(n for n in graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "pre_logits"
    graph.node.append(onnx.helper.make_node("Neg", ["pre_logits"], [out]))
    onnx.save(model, path)


@pytest.mark.parametrize("fmt", ["onnx-qcdq", "qonnx"])
def test_an_onnx_file_that_computes_something_else_fails_its_check(written, tmp_path, fmt):
    shutil.copytree(written.dir, tmp_path, dirs_exist_ok=True)
    _negate_logits(tmp_path / written.files[fmt])
    check = FORMATS[fmt].check(tmp_path, written.ref)
    assert not check.ok and check.matching == 0 and check.top1_agreement < 0.5
    assert check.torch_self_matching == 1 and check.required_matching == MATCHING_SHARE
    assert check.reasons()[0].startswith(f"logits match PyTorch's on 0.00% of {check.images} images, 95.00% needed")
