"""Run directories: ``runs/NAME/`` holds the resolved config and every stage's outputs.

:class:`RunDir` is the one place that knows the layout; every write into it goes through
:mod:`qspos.runtime.files` (atomic). ``config.yaml`` is written by a stage once it has validated
its inputs (:meth:`RunDir.record_config`), never before, so a refused command leaves it alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from qspos.errors import QsposError
from qspos.runtime.config import Config, load_config
from qspos.runtime.files import write_text
from qspos.runtime.progress import MetricsLog

SUPERNET_SECTIONS = ("model", "space")


def fingerprint(cfg: Config, *sections: str) -> str:
    """Digest of the config sections a stage's output depends on (checked on resume and reuse)."""
    d = cfg.to_dict()
    canon = json.dumps({s: d[s] for s in sections}, sort_keys=True)
    return hashlib.sha1(canon.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class NetDir:
    """``finetune/<name>/``: one fine-tuned net."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> Path:
        """The fine-tuned net: model state, arch, fingerprint."""
        return self.path / "model.pt"

    @property
    def train_checkpoint(self) -> Path:
        """The training loop's resumable checkpoint."""
        return self.path / "train.pt"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def arch(self) -> Path:
        return self.path / "arch.yaml"

    @property
    def layers(self) -> Path:
        """Per-layer precision table: the model's module name -> bits and channels."""
        return self.path / "layers.json"

    @property
    def started(self) -> bool:
        """Was this net fine-tuned, or is it being? (then a fresh start must not overwrite it)"""
        return any(p.exists() for p in (self.model, self.train_checkpoint, self.result))

    @property
    def done(self) -> bool:
        return self.model.is_file() and self.result.is_file()


class RunDir:
    """Every path of one run directory."""

    CONFIG, SUPERNET, METRICS, REPORT = "config.yaml", "supernet.pt", "metrics.jsonl", "report.md"
    SEARCH, FINETUNE, EXPORT, TENSORBOARD = "search", "finetune", "export", "tensorboard"
    # a finished search's files (results.json is written first: alone, the search may have been cut)
    SEARCH_OUTPUTS = ("results.json", "pareto.md", "pareto.png")
    # what a stage leaves here: any of them there means the directory is in use
    OUTPUTS = (SUPERNET, METRICS, SEARCH, FINETUNE, EXPORT, REPORT)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: Config, out: str | Path | RunDir | None = None) -> RunDir:
        """``out``, or ``runs_dir/NAME`` of the config when it is None."""
        if isinstance(out, RunDir):
            return out
        return cls(out if out is not None else cfg.run_dir)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ the files

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def supernet(self) -> Path:
        return self.path / self.SUPERNET

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def report_plot(self) -> Path:
        """The report's accuracy-against-BitOps plot (supernet and fine-tuned points, budgets)."""
        return self.path / "pareto.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def search(self) -> Path:
        return self.path / self.SEARCH

    @property
    def search_state(self) -> Path:
        return self.search / "state.pt"

    @property
    def search_results(self) -> Path:
        return self.search / "results.json"

    @property
    def pareto_md(self) -> Path:
        return self.search / "pareto.md"

    @property
    def pareto_png(self) -> Path:
        return self.search / "pareto.png"

    def net(self, name: str) -> NetDir:
        return NetDir(self.path / self.FINETUNE / name)

    @property
    def float_net(self) -> NetDir:
        """``float/``: the float baseline (the backbone unquantized, fine-tuning recipe)."""
        return NetDir(self.path / "float")

    def finetuned(self) -> list[NetDir]:
        """Every finished fine-tuned net, by name."""
        return [NetDir(p.parent) for p in sorted((self.path / self.FINETUNE).glob("*/result.json"))
                if NetDir(p.parent).done]

    def export(self, name: str) -> Path:
        return self.path / self.EXPORT / name

    def export_summary(self, name: str) -> Path:
        return self.export(name) / "summary.json"

    def export_summaries(self) -> list[Path]:
        return sorted((self.path / self.EXPORT).glob("*/summary.json"))

    def finetune_results(self) -> list[Path]:
        return sorted((self.path / self.FINETUNE).glob("*/result.json"))

    # ------------------------------------------------------------------ state

    def in_use(self) -> list[str]:
        """The stage outputs present (empty for a new or empty directory)."""
        return [name for name in self.OUTPUTS if (self.path / name).exists()]

    def search_finished(self) -> bool:
        return self.search_state.is_file() and all((self.search / f).is_file() for f in self.SEARCH_OUTPUTS)

    def metrics_log(self, cfg: Config, stage: str, enabled: bool = True) -> MetricsLog:
        """The stage's log into ``metrics.jsonl`` (and TensorBoard with ``log.tensorboard``)."""
        return MetricsLog(self.metrics, stage, enabled, self.tensorboard if cfg.log.tensorboard else None)

    def record_config(self, cfg: Config) -> None:
        """Write the resolved config of the command that is now known to run (atomically)."""
        write_text(self.config, cfg.to_yaml())

    def read_config(self) -> Config:
        if not self.config.is_file():
            raise QsposError(f"{self.path} is not a run directory (no {self.CONFIG})")
        return load_config(self.config)
