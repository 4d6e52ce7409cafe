"""The caller's task: what its score is called in results and tables."""

from __future__ import annotations

import functools

from qspos.runtime.task import Task


def psnr(model, loader):  # a caller's score
    return 0.0


def test_a_score_is_named_by_its_score_name_or_its_function_name():
    assert Task().score_name() == "top-1"
    assert Task(score=psnr).score_name() == "psnr"
    assert Task(score=lambda model, loader: 0.0).score_name() == "score"
    assert Task(score=functools.partial(psnr)).score_name() == "score"  # no __name__
    named = functools.partial(psnr)
    named.score_name = "PSNR (dB)"
    assert Task(score=named).score_name() == "PSNR (dB)"
