"""What the finished nets say beyond their means: the same arch fine-tuned twice in one seed, and
how each seed's supernet ranks every net it scored."""

import dataclasses

from qspos.core.arch import Arch, Choice
from qspos.stages.bench.analysis import ranking, repeats
from qspos.stages.bench.records import NetRecord


def _net(name: str, seed: int, w_bits: int, top1: float) -> NetRecord:
    arch = Arch({"layer1": Choice(w_bits, 2, 1.0)}).to_dict()
    return NetRecord(name.split("-")[0], None, None, seed, "supernet", name, 1, 1, top1, 10_000, 0.003, None, None, 1,
                     1.0, arch)


def test_an_arch_fine_tuned_twice_in_one_seed_is_a_repeat_with_its_spread():
    nets = [_net("searched-w2a2", 0, 2, 0.8976), _net("rank-x", 0, 2, 0.9022), _net("uniform-w3a2", 0, 3, 0.90),
            _net("searched-w2a2", 1, 2, 0.91)]  # seed 1's net is another supernet's: no repeat
    (r,) = repeats(nets)
    assert r["seed"] == 0 and r["nets"] == ["searched-w2a2", "rank-x"] and r["test_top1"] == [0.8976, 0.9022]
    assert abs(r["spread"] - 0.0046) < 1e-12 and r["digest"] == Arch.from_dict(nets[0].arch).digest()
    assert repeats(nets[2:]) == []


def test_each_seeds_supernet_is_judged_on_every_net_it_scored():
    def scored(name, seed, w_bits, supernet, test):
        return dataclasses.replace(_net(name, seed, w_bits, test), search_val_top1=supernet)

    nets = [scored("uniform-w1a2", 0, 1, 0.80, 0.86), scored("uniform-w2a2", 0, 2, 0.82, 0.85),
            scored("searched-w2a2", 0, 2, 0.84, 0.87), _net("float-x", 0, 8, 0.93),  # not scored: left out
            scored("uniform-w1a2", 1, 1, 0.80, 0.85), scored("uniform-w2a2", 1, 2, 0.82, 0.86)]
    first, second = ranking(nets)["overall"]
    assert first == {"seed": 0, "n": 3, "kendall_tau": 1 / 3, "spearman_rho": 0.5}  # 2 of 3 pairs concordant
    assert second["seed"] == 1 and second["n"] == 2 and second["kendall_tau"] == 1.0
