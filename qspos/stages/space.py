"""``qspos space``: what the conversion made of a config's model, as data.

For each choice point its domain and the layers it controls; for each layer its role, where its
bits and width come from, its input quantizer's sign, and why it has no width choice.
"""

from __future__ import annotations

from typing import Any

from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config


def describe_space(cfg: Config) -> dict[str, Any]:
    """The space of ``cfg``'s model: ``choice_points``, ``layers``, ``size`` and ``notes``."""
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
    return {"model": cfg.model.name, "size": supernet.space.size, "choice_points": points,
            "layers": [e.to_dict() for e in supernet.layer_entries], "notes": list(supernet.notes)}
