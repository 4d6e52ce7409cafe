"""``qspos space``: what the conversion made of a config's model, as data.

For each choice point its domain and the layers it controls; for each layer its role, where its
bits and width come from, its input quantizer's sign, and why it has no width choice; and how
much of the net's MACs the width choices reach (a net whose widths reach little of it is searched
for its bits almost alone).
"""

from __future__ import annotations

from typing import Any

from qspos.core.arch import Choice
from qspos.core.cost import CostModel
from qspos.core.supernet import Supernet
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config


def describe_space(cfg: Config) -> dict[str, Any]:
    """The space of ``cfg``'s model: ``choice_points``, ``layers``, ``size``, ``macs`` (of the base
    net and of the narrowest widths) and ``notes``."""
    supernet = build_supernet(cfg)
    name_of = {id(layer): name for name, layer in supernet.layer_items()}
    points = []
    for p in supernet.space.points:
        binding = supernet.bindings[p.name]
        points.append({
            "name": p.name,
            "pairs": [list(pair) for pair in p.pairs],
            "widths": list(p.widths) if p.widths is not None else None,
            "bits_layers": [name_of[id(layer)] for layer in binding.layers],
            "width_layers": list(dict.fromkeys(name_of[id(layer)] for slot in binding.slots
                                               for layer in slot.producers + slot.consumers)),
            "width_channels": [slot.base for slot in binding.slots],
        })
    macs = _width_reach(supernet, cfg.input_shape)
    return {"model": cfg.model.name, "size": supernet.space.size, "choice_points": points,
            "layers": [e.to_dict() for e in supernet.layer_entries], "macs": macs,
            "notes": [*supernet.notes, _reach_note(macs)]}


def _width_reach(supernet: Supernet, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The MACs of the base net (every width at its base multiplier) and of the narrowest one
    (every width at its lowest), for inputs of ``input_shape``: what the width choices can remove."""
    space = supernet.space
    base = space.uniform(*space.points[0].pairs[0])
    narrow = base.replace(**{p.name: Choice(*p.pairs[0], min(p.widths)) for p in space.points if p.widths})
    costs = CostModel(supernet, input_shape)
    lowest = min((min(p.widths) for p in space.points if p.widths), default=None)
    return {"base": costs.cost(base).macs, "narrowest": costs.cost(narrow).macs, "lowest_width": lowest}


def _reach_note(macs: dict[str, Any]) -> str:
    """What the widths can do, in words: on a net whose width choices reach a small part of its
    MACs (RegNetY's grouped convs pin most channels), a search under a MACs budget has little to
    choose from."""
    if macs["lowest_width"] is None:
        return "no channel group takes a width: the search is over bits only"
    kept = macs["narrowest"] / macs["base"]
    return (f"every width at {macs['lowest_width']:g} still leaves {kept:.1%} of the MACs: the width choices "
            f"can remove {1 - kept:.1%} of them")
