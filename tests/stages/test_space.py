"""``describe_space``: how much of the net's MACs the width choices reach, said in a note (issue 29:
on RegNetY-400MF, every width at 0.5 still leaves 96 % of the MACs)."""

from __future__ import annotations

import json

import pytest
from torch import nn

from qspos.cli import main
from qspos.runtime.config import load_config
from qspos.stages.space import describe_space


def two_convs() -> nn.Module:
    """A fixed stem, a 1x1 conv with 8 shrinkable channels and a 1x1 conv with 4 shrinkable channels
    before the pooled classifier."""
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def grouped() -> nn.Module:
    """Every inner channel read by a grouped conv: no width anywhere."""
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 4, 1, groups=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


class _WithAux(nn.Module):
    """GoogLeNet's pattern, small: auxiliary logits returned next to the logits in train mode."""

    def __init__(self):
        super().__init__()
        self.stem, self.aux, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(4, 10), nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x).mean((2, 3))
        return (self.fc(x), self.aux(x)) if self.training else self.fc(x)


def with_aux() -> nn.Module:
    return _WithAux()


def _cfg(factory: str, widths: list[float]):
    return load_config({"model": {"name": f"tests.stages.test_space:{factory}", "num_classes": 10,
                                  "in_channels": 3, "input_size": 4},
                        "space": {"weight_bits": [2, 4], "act_bits": [4], "width_multipliers": widths}})


@pytest.mark.parametrize("widths", [[0.5, 1.0], [0.5, 1.0, 1.5]])
def test_the_space_says_how_much_of_the_macs_its_widths_can_remove(widths):
    space = describe_space(_cfg("two_convs", widths))
    # 16 pixels: stem 3*4, then 4*8 and 8*4 (halved twice at width 0.5: 4*4, 4*2), classifier 4*10 (2*10)
    base, narrowest = 16 * (12 + 32 + 32) + 40, 16 * (12 + 16 + 8) + 20
    assert space["macs"] == {"base": base, "narrowest": narrowest, "lowest_width": 0.5}
    kept = narrowest / base
    assert space["notes"] == [f"every width at 0.5 still leaves {kept:.1%} of the MACs: the width choices can "
                              f"remove {1 - kept:.1%} of them"]


def test_a_space_without_widths_says_it_searches_bits_only():
    space = describe_space(_cfg("grouped", [0.5, 1.0]))
    assert space["macs"]["base"] == space["macs"]["narrowest"] and space["macs"]["lowest_width"] is None
    assert space["notes"] == ["no channel group takes a width: the search is over bits only"]


def test_a_model_with_auxiliary_train_mode_outputs_is_refused_by_the_space_command(tmp_path, capsys):
    """Issue 29: GoogLeNet with its auxiliary heads got a space (exit 0) whose classifier was
    searched; ``cost`` and ``train`` then failed on a raw KeyError."""
    cfg = tmp_path / "aux.yaml"
    cfg.write_text(json.dumps({"model": {"name": "tests.stages.test_space:with_aux", "num_classes": 10,
                                         "in_channels": 3, "input_size": 4},
                               "space": {"weight_bits": [2, 4], "act_bits": [4]}}))
    assert main(["space", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "_WithAux's forward returns 2 values (tuple) in train mode, not one tensor" in err
    assert len(err.splitlines()) == 1
