"""``qspos eval`` of a supernet path (a fine-tuned net's is checked in test_finetune.py)."""

import pytest

from qspos.errors import QsposError
from qspos.stages.evaluate import evaluate_checkpoint
from tests.stages.test_finetune import _finetune_cfg


def test_eval_of_a_supernet_checkpoint_needs_an_arch(tmp_path, perturb):
    cfg, run_dir, arch = _finetune_cfg(tmp_path, perturb)
    with pytest.raises(QsposError, match="--arch"):
        evaluate_checkpoint(cfg, run_dir / "supernet.pt")
    res = evaluate_checkpoint(cfg, run_dir / "supernet.pt", arch)
    assert res.kind == "supernet" and 0 <= res.test_top1 <= 1
