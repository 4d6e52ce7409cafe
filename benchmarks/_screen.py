"""What the benchmark scripts share: the lever screens' command line, provenance and results
folder, and how a benchmark run in pieces stops."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from qspos.errors import QsposError
from qspos.runtime.provenance import git_commit, machine

RESULTS = Path(__file__).parent / "results" / "levers"


def screen_parser(doc: str, work: str, name: str) -> argparse.ArgumentParser:
    """The options every screen takes; a screen adds its own input (a teacher, a supernet)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--work", default=work, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--name", default=name, help="results file stem under results/levers/")
    return parser


def provenance() -> dict:
    """Command, commit, machine and date of this invocation."""
    return {"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "commit": git_commit(),
            "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def provenance_lines(result: dict) -> list[str]:
    return ["", f"- command: `{result['command']}`", f"- commit: `{result['commit']}`",
            f"- machine: {result['machine']}", f"- date: {result['date']}",
            f"- wall time of this invocation's pieces (s): {json.dumps(result['ledger'])}"]


def write_results(results: Path, name: str, result: dict, text: str) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / f"{name}.md").write_text(text)
    print(text)


@contextmanager
def in_pieces(name: str) -> Iterator[None]:
    """Run a benchmark piece: SIGTERM stops it like Ctrl-C (the ledger keeps the piece's time, the
    finished nets stay), and a bad request or a stop exits with one line."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except QsposError as e:  # one line, as the CLI prints it
        sys.exit(f"{name}: error: {' '.join(str(e).split())}")
    except KeyboardInterrupt:
        sys.exit(f"{name}: stopped; finished nets are kept: rerun with --resume to continue")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
