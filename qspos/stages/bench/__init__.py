"""``qspos bench``: accuracy against BitOps with fine-tuned baselines over seeds, and how well
the supernet ranks archs.

For each seed, into ``WORK/seed<S>/`` (a run directory: ``supernet.pt``, ``search/``,
``float/``, ``finetune/<net>/``):

- ``float``: the backbone unquantized, trained from scratch with the ``float`` recipe;
- ``uniform-w<w>a<a>``: every (w, a) pair of the space (width 1.0) under the bounds of some
  budget, so that each budget has its best-fitting uniform net (or ``Plan.uniform``'s pairs);
- ``searched-<budget>``: the evolution's best arch of each budget;
- ``random-<budget>``: the random search's best (as many evaluations as the evolution);
- ``sensitivity-<budget>``: the sensitivity allocation of each budget (``qspos sensitivity`` on
  the seed's supernet, measured once: ``search/sensitivity.json``);
- ``rank-<digest>`` (first seed only): archs spread over the BitOps range of everything the
  search evaluated, for Kendall tau / Spearman rho between supernet val top-1 and test top-1.

Every quantized net is fine-tuned with the same ``finetune`` section and initialisation policy:
``supernet`` (inherited weights and thresholds) or ``scratch`` (nets under ``seed<S>/scratch/``).
A uniform net whose pair is outside the space (W8A8 in a {2,3,4} space) has no supernet
weights: it is its own run directory (``.../variants/uniform-w8a8/``, a one-arch space) and
starts from the seed's float net under the ``supernet`` policy, from scratch under ``scratch``
(its ``init`` says which). Each stage is the pipeline's own (``train_supernet``, ``search``,
``finetune``, ``train_float``) with ``resume``: a killed net goes on from its checkpoint, and a
measured net (its ``result.json``) is never redone, even with its checkpoints gone, so the result
files alone, copied into an empty work directory, continue a benchmark on another machine (the
supernet and search are retrained only for a seed with nets still to measure).

The modules: ``plan`` (what is trained, and where), ``runner`` (training it, piece by piece),
``allocation`` (the sensitivity nets), ``records`` (the finished nets), ``analysis`` (summary,
diagnosis, ranking quality), ``comparison`` (each budget against the best-fitting uniform net and
the sensitivity allocation), ``targets``
(a benchmark's thresholds, from its targets file), ``ledger`` (wall time over invocations),
``results``, ``markdown`` and ``plots`` (the files written).
"""

from qspos.stages.bench.plan import PARTS, BenchDir, Plan
from qspos.stages.bench.runner import bench, run_bench, spread
from qspos.stages.bench.targets import Targets

__all__ = ["PARTS", "BenchDir", "Plan", "Targets", "bench", "run_bench", "spread"]
