"""What a Python caller passes besides the config: its model, data, loss and score.

A :class:`Task` wins over the config's ``model`` and ``data`` sections and over cross-entropy and
top-1. The API passes it to the stages, and they pass each object to what uses it (the model to
the build, the data to the splits, the loss to the training objective, the score to evaluation);
a stage called from the command line gets :data:`NO_TASK` and behaves as the config says.

- ``model``: an ``nn.Module`` (converted as any model is); the run directory then records
  ``model.name: object:<module>.<Class>``, and reloading the run needs the same object again.
- ``train``/``val``/``test``: ``Dataset`` s or ``DataLoader`` s yielding ``(input, target)``
  pairs (a loader gives its dataset; qspos makes its own seeded loaders so runs resume exactly).
  Without ``val``, ``data.val_size`` items are held out of ``train``.
- ``loss(model, batch) -> Tensor``: the training loss of a batch (supernet training and
  fine-tuning); default cross-entropy with ``label_smoothing``.
- ``score(model, loader) -> float``: higher is better; the search ranks candidates by it, and it
  stands in every ``*_top1`` result field (top-5 is then None). Default: top-1 accuracy. It is
  called on real modules only (a supernet path, a fine-tuned or float net), in eval mode on the
  run's device, with ``loader`` yielding ``(input, target)`` batches already on that device; an
  exported file is checked by its outputs against the net's, never scored. Results and tables
  name it by its ``score_name`` attribute, else its ``__name__``, and show its values as they are
  (only top-1, a fraction, is shown in %).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from qspos.errors import QsposError
from qspos.runtime.progress import TOP1

Data = Dataset | DataLoader
Loss = Callable[[nn.Module, Any], Tensor]
Score = Callable[[nn.Module, Iterable], float]
OBJECT_PREFIX = "object:"  # model.name of a run whose model was passed as an object


@dataclass(frozen=True)
class Task:
    model: nn.Module | None = None
    train: Data | None = None
    val: Data | None = None
    test: Data | None = None
    loss: Loss | None = None
    score: Score | None = None

    def __post_init__(self) -> None:
        if (self.val is not None or self.test is not None) and self.train is None:
            raise QsposError("data: pass train= too when passing val= or test= (the supernet trains on it)")

    @property
    def has_data(self) -> bool:
        return self.train is not None

    def score_name(self) -> str:
        """What ``Config.score`` records: top-1, or the name of the caller's score."""
        if self.score is None:
            return TOP1
        name = getattr(self.score, "score_name", None) or getattr(self.score, "__name__", None)
        return "score" if name in (None, "", "<lambda>") else str(name)

    def model_name(self) -> str:
        """What ``model.name`` records for a model passed as an object."""
        cls = type(self.model)
        return f"{OBJECT_PREFIX}{cls.__module__}.{cls.__qualname__}"


NO_TASK = Task()  # the command line's: everything as the config says


def dataset_of(data: Data) -> Dataset:
    return data.dataset if isinstance(data, DataLoader) else data


def batch_size_of(data: Data | None) -> int | None:
    return data.batch_size if isinstance(data, DataLoader) else None
