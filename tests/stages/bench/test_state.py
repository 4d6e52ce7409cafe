"""A benchmark's state: the files that say what was measured and each seed's supernet and search
checkpoints, not the fine-tuned nets' ones, copied out and back without overwriting what a work
directory already has."""

from qspos.stages.bench.state import restore_state, save_state


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_state_holds_results_and_the_supernet_and_restores_only_what_is_missing(tmp_path):
    work, state = tmp_path / "work", tmp_path / "state"
    files = {"ledger.json": "[]", "seed0/config.yaml": "c", "seed0/supernet.pt": "supernet",
             "seed0/search/results.json": "{}", "seed0/search/sensitivity.json": "{}",
             "seed0/search/state.pt": "search", "seed0/finetune/uniform-w2a2/result.json": "r",
             "seed0/finetune/uniform-w2a2/model.pt": "weights", "seed0/finetune/uniform-w2a2/train.pt": "weights",
             "seed0/metrics.jsonl": "log"}
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    assert save_state(work, state) == 8
    assert _tree(state) == {k: v for k, v in files.items() if "finetune" not in k or not k.endswith(".pt")}

    fresh = tmp_path / "fresh"
    (fresh / "seed0").mkdir(parents=True)
    (fresh / "seed0" / "metrics.jsonl").write_text("newer log")
    assert restore_state(state, fresh) == 7
    assert _tree(fresh)["seed0/supernet.pt"] == "supernet" and _tree(fresh)["seed0/search/state.pt"] == "search"
    assert _tree(fresh)["seed0/metrics.jsonl"] == "newer log"  # the work directory's own file is kept
    assert _tree(fresh)["seed0/finetune/uniform-w2a2/result.json"] == "r"
    assert restore_state(tmp_path / "none", fresh) == 0 and save_state(tmp_path / "none", state) == 0
