"""A tiny benchmark seed for the scripts that read one: its supernet trained and one net fine-tuned."""

from __future__ import annotations

from pathlib import Path

import yaml

from qspos.cli import main
from qspos.core.arch import Arch
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config, load_config
from qspos.stages.finetune import FinetuneResult, Target, finetune
from tests.benchmarks.test_bench_accuracy import TINY


def tiny_seed_run(tmp_path: Path) -> tuple[Path, Config, Arch, FinetuneResult]:
    """``tmp_path/seed``: the tiny config's supernet and its uniform W2A2 net, ``uniform-w2a2``."""
    cfg_file, seed = tmp_path / "tiny.yaml", tmp_path / "seed"
    cfg_file.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(cfg_file), "--out", str(seed)]) == 0
    cfg = load_config(cfg_file)
    arch = build_supernet(cfg).space.uniform(2, 2)
    (tuned,) = finetune(cfg, seed, targets=[Target("uniform-w2a2", arch)])
    return seed, cfg, arch, tuned
