"""Run directories: ``runs/NAME/`` holds the resolved config and every stage's outputs.

:class:`RunDir` is the one place that knows the layout; every write into it goes through
:mod:`qspos.runtime.files` (atomic), by the one command that holds the directory (:func:`hold`).
``config.yaml`` is written by a stage once it has validated its inputs
(:meth:`RunDir.record_config`), never before, so a refused command leaves it alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import inspect
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from qspos.errors import QsposError
from qspos.runtime.config import Config, load_config
from qspos.runtime.distributed import is_main_process
from qspos.runtime.files import stale_temps, write_text
from qspos.runtime.progress import MetricsLog

SUPERNET_SECTIONS = ("model", "space")
# the data settings that change no result; every other one defines a run's data (data_identity)
DATA_NOT_IDENTITY = ("workers", "download")
LOCK = ".lock"  # flock'ed by the command that holds the directory; holds its PID and host
_held: dict[Path, tuple[int, bool]] = {}  # directories this process holds -> (lock fd, created by it)
Stage = TypeVar("Stage", bound=Callable[..., Any])


def data_identity(cfg: Config) -> dict[str, Any]:
    """The settings that define a run's data (which images, split and transforms), as
    ``{"data.KEY": value}``: what every stage's resume and reuse compares. A data setting is in
    unless :data:`DATA_NOT_IDENTITY` declares that it changes no result, so a new one is never
    silently left out (as ``mean`` and ``std`` once were)."""
    return {f"data.{k}": v for k, v in dataclasses.asdict(cfg.data).items() if k not in DATA_NOT_IDENTITY}


# settings added after runs were saved that behaved as this value does: at it, a setting stays out
# of the digest, so those runs still resume
IMPLIED = {("search", "sensitivity_probes"): "joint", ("finetune", "fold_bn"): "after",
           ("space", "batchnorm"): "shared"}


def fingerprint(cfg: Config, *sections: str) -> str:
    """Digest of the config sections a stage's output depends on (checked on resume and reuse);
    the ``data`` section counts by its :func:`data_identity`."""
    d = {**cfg.to_dict(), "data": data_identity(cfg)}
    for (section, key), value in IMPLIED.items():
        if d[section].get(key) == value:
            del d[section][key]
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
    SEARCH_STATE = "state.pt"  # in SEARCH
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
        return self.search / self.SEARCH_STATE

    @property
    def search_results(self) -> Path:
        return self.search / "results.json"

    @property
    def pareto_md(self) -> Path:
        return self.search / "pareto.md"

    @property
    def pareto_png(self) -> Path:
        return self.search / "pareto.png"

    @property
    def sensitivity_json(self) -> Path:
        """The sensitivity table's data and each budget's allocation (``qspos sensitivity``)."""
        return self.search / "sensitivity.json"

    @property
    def sensitivity_md(self) -> Path:
        return self.search / "sensitivity.md"

    @property
    def sensitivity_png(self) -> Path:
        return self.search / "sensitivity.png"

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

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """This directory, held for the block (see :func:`hold`)."""
        return hold(self.path)


@contextlib.contextmanager
def hold(path: str | Path) -> Iterator[None]:
    """Hold the run directory ``path`` (created if missing) for the block: one command at a time.

    Two commands in one directory would interleave ``metrics.jsonl`` and leave a ``config.yaml``
    of one run beside the checkpoints of another, so a second one is refused with the holder's
    PID and host. The lock is ``fcntl.flock`` on ``path/.lock``, which the OS drops when the
    holder ends in any way, SIGKILL included: the file itself means nothing. Re-entrant within a
    process (``qspos run`` holds it across its stages); under torchrun only rank 0 takes it, so
    that the ranks of one job do not refuse each other. Once it is held, the temp files of writes
    that a kill cut short are removed. On release the lock file goes, and the directory too when
    this call created it and nothing was written (a refused command leaves no trace).
    """
    key = Path(path).resolve()
    outer = is_main_process() and key not in _held
    if outer:
        _held[key] = _lock(key)
    try:
        yield
    finally:
        if outer:
            _unlock(key, *_held.pop(key))


def holds_run_dir(stage: Stage) -> Stage:
    """``stage`` run holding its run directory: its ``run_dir`` argument, or ``runs/NAME`` of its
    ``cfg`` (:meth:`RunDir.of`). The stage functions are where the CLI, the Python API and the
    benchmark all enter a run directory, so the lock is taken here, once for each."""
    params = list(inspect.signature(stage).parameters)

    @functools.wraps(stage)
    def held(*args: Any, **kwargs: Any) -> Any:
        given = {**dict(zip(params, args)), **kwargs}
        where = given.get("run_dir")
        if "cfg" in given:  # None: the config's runs/NAME
            where = RunDir.of(given["cfg"], where)
        with hold(where.path if isinstance(where, RunDir) else where):
            return stage(*args, **kwargs)

    return cast(Stage, held)


def _lock(folder: Path) -> tuple[int, bool]:
    """Take ``folder``'s lock or refuse; (the lock file's fd, whether ``folder`` was created)."""
    lock = folder / LOCK
    while True:
        created = not folder.is_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the holder removed the folder it had created as we came in
            continue
        except OSError as e:
            raise QsposError(f"cannot lock run directory {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "starting up"
            os.close(fd)
            raise QsposError(f"{folder} is in use by another qspos command ({holder}): wait for it to end, "
                             "or choose another --out") from None
        except OSError as e:  # a file system without locks
            os.close(fd)
            raise QsposError(f"cannot lock run directory {folder}: {e.strerror or e}") from None
        if _still_there(fd, lock):
            break
        os.close(fd)  # the holder removed this lock file as we opened it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode())
        _remove_stale_temps(folder)
    except BaseException:
        _unlock(folder, fd, created)
        raise
    return fd, created


def _still_there(fd: int, lock: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), lock.stat())
    except FileNotFoundError:
        return False


def _unlock(folder: Path, fd: int, created: bool) -> None:
    """Remove the lock file (and the folder, if this command created it and left it empty) while
    still holding the lock, then release it."""
    with contextlib.suppress(OSError):
        (folder / LOCK).unlink()
        if created:
            folder.rmdir()
    os.close(fd)


def _remove_stale_temps(root: Path) -> None:
    """Every temp file under ``root`` that a killed write left, except inside a nested run
    directory (a benchmark's): its own holder cleans that one."""
    for folder, subdirs, _ in os.walk(root):
        subdirs[:] = [d for d in subdirs if not os.path.exists(os.path.join(folder, d, LOCK))]
        for tmp in stale_temps(folder):
            tmp.unlink(missing_ok=True)
