"""Tiny configs for the tests, a searchable run directory that needs no trained supernet, and a
counter of the reads from tensors to the host."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from qspos.runtime.build import build_supernet
from qspos.runtime.checkpoint import atomic_save
from qspos.runtime.config import Config, load_config
from qspos.runtime.rundir import SUPERNET_SECTIONS, fingerprint


def tiny_config(**search) -> dict:
    """ResNet-8 (widths 4/8/8) on 12x12 synthetic images; 8 choices per block, 512 archs."""
    return {
        "name": "tiny",
        "model": {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 12,
                  "args": {"depth": 8, "widths": [4, 8, 8]}},
        "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
        "data": {"dataset": "synthetic", "synthetic_size": 160, "val_size": 48, "eval_batch_size": 32},
        "search": {"budgets": [{"name": "w3a3", "bitops": "uniform 3,3"}], "population": 8, "iterations": 3,
                   "topk": 3, "mutation_count": 4, "crossover_count": 4, "max_tries": 200,
                   "calib_images": 32, "val_images": 48, **search},
    }


def make_run(tmp_path: Path, perturb, overrides: list[str] | None = None, **search) -> tuple[Config, Path]:
    """A config and a run directory holding a (perturbed, untrained) supernet checkpoint."""
    cfg = load_config(tiny_config(**search), [f"runs_dir={tmp_path}", *(overrides or [])])
    torch.manual_seed(0)
    supernet = perturb(build_supernet(cfg))
    run_dir = cfg.run_dir
    atomic_save({"model": supernet.state_dict(), "fingerprint": fingerprint(cfg, *SUPERNET_SECTIONS),
                 "complete": True}, run_dir / "supernet.pt")
    return cfg, run_dir


# ResNet-8 (widths 4/8/8) on 8x8 synthetic images, trained for a few dozen steps
TRAIN_CONFIG = {
    "name": "tiny",
    "seed": 0,
    "model": {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 8,
              "args": {"depth": 8, "widths": [4, 8, 8]}},
    "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
    "data": {"dataset": "synthetic", "synthetic_size": 256, "val_size": 32, "batch_size": 16,
             "eval_batch_size": 64},
    "train": {"epochs": 6, "lr": 0.1, "warmup_epochs": 0.5, "log_every": 5, "checkpoint_every": 10,
              "threshold_init_batches": 2},
    "search": {"calib_images": 64},
}


def train_config(*overrides: str) -> Config:
    return load_config(TRAIN_CONFIG, list(overrides))


READS = ("item", "tolist", "cpu", "numpy", "__int__", "__index__", "__float__", "__bool__")


@contextlib.contextmanager
def count_host_reads() -> Iterator[Counter]:
    """Counts calls of every ``Tensor`` method that copies a value to the host, by method name."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name: str):
        original = originals[name]

        def read(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
