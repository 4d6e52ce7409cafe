"""qspos: joint mixed-precision and channel search with a single-path one-shot Brevitas supernet."""

import logging

# Brevitas imports torch's C++-extension helper, which warns about a missing CUDA toolkit on CPU
# machines; that says nothing about qspos, so keep it out of users' terminals.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

# ``qspos.search``, ``qspos.finetune`` and ``qspos.export`` are the stage functions of qspos/api.py,
# not the submodules of the same names: import names from the submodules directly
# (``from qspos.search import SearchResult``), not through these package attributes.
from qspos.api import evaluate, export, finetune, run, search, train_supernet  # noqa: E402
from qspos.arch import Arch, Choice  # noqa: E402
from qspos.config import Config, load_config  # noqa: E402
from qspos.errors import QsposError  # noqa: E402
from qspos.space import ChoicePoint, Space  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Arch", "Choice", "ChoicePoint", "Config", "QsposError", "Space", "evaluate", "export", "finetune",
           "load_config", "run", "search", "train_supernet"]
