"""The ``qspos`` command line. Bad input prints one line (``qspos: error: ...``) and exits with 2.

Each command imports its stage only when it runs, so ``qspos --help`` and argument errors
return at once, and a config error is reported before torch and Brevitas are loaded.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from qspos._version import __version__
from qspos.errors import QsposError

if TYPE_CHECKING:
    from qspos.runtime.config import Config
    from qspos.stages.bench import Plan
    from qspos.stages.export import ExportResult

EPILOG = "Every command also works as 'python -m qspos ...' and under torchrun. Docs: README.md."


def _parse_pair(text: str) -> tuple[int, int]:
    try:
        w, a = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,A (e.g. 4,4), got {text!r}") from None
    if not (1 <= w <= 16 and 1 <= a <= 16):
        raise argparse.ArgumentTypeError(f"bit-widths must be 1-16, got {text!r}")
    return w, a


def _common(p: argparse.ArgumentParser, out: bool = True, resume: bool = True) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    if out:
        p.add_argument("--out", help="run directory (default: runs/NAME from the config)")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the run's checkpoints")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from qspos.runtime.config import EXPORT_FORMATS  # the config module alone: no torch

    parser = argparse.ArgumentParser(
        prog="qspos", epilog=EPILOG,
        description="Joint mixed-precision and channel search with a single-path one-shot Brevitas supernet.",
    )
    parser.add_argument("--version", action="version", version=f"qspos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _common(sub.add_parser("run", help="train -> search -> finetune -> eval -> export -> report"))
    _common(sub.add_parser("train", help="train the supernet with uniform path sampling"))
    _common(sub.add_parser("search", help="evolutionary search under the configured budgets"))
    _common(sub.add_parser("sensitivity", help="per choice point sensitivity table and its allocation per budget"),
            resume=False)
    p = sub.add_parser("finetune", help="fine-tune the chosen archs as standalone Brevitas nets")
    _common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--arch", help="arch YAML/JSON file to fine-tune")
    g.add_argument("--pick", type=int, help="fine-tune each budget's N-th best arch (0-based)")

    _common(sub.add_parser("float", help="train the float teacher (the backbone unquantized, the float recipe), "
                                         "or measure float.checkpoint"))

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test split")
    _common(p, out=False, resume=False)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) to evaluate")
    p.add_argument("--arch", help="arch file (needed for a supernet checkpoint)")

    p = sub.add_parser("export", help="export a run's fine-tuned nets")
    p.add_argument("run_dir", help="run directory holding finetune/")
    p.add_argument("--format", dest="formats", action="append",
                   choices=EXPORT_FORMATS, help="repeatable; default: the config's export.formats")

    p = sub.add_parser("cost", help="MACs, BitOps and size of an arch, per layer")
    _common(p, out=False, resume=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--arch", help="arch YAML/JSON file")
    g.add_argument("--uniform", type=_parse_pair, metavar="W,A",
                   help="every choice point at W-bit weights, A-bit activations, base width")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("space", help="the choice points of a config's model and what each layer got")
    _common(p, out=False, resume=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("latency", help="measure the per-layer latency table of a space on this machine")
    _common(p, out=False, resume=False)
    p.add_argument("table", metavar="OUT.json", help="table to write (for search.latency_table)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per layer setting (median)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                   help="time float torch ops (default), or each layer as the QCDQ export writes it in onnxruntime's "
                   "optimised session, one thread: integer kernels where the file gets them")

    p = sub.add_parser("bench", help="accuracy against BitOps: float, uniform, searched, random and "
                       "sensitivity nets over seeds")
    _common(p, out=False)
    p.add_argument("--out", help="benchmark directory: checkpoints and results (default: runs/NAME-bench)")
    bench_arguments(p)
    return parser


def bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``qspos bench`` and ``benchmarks/bench_accuracy.py`` share."""
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--init", choices=["supernet", "scratch"], default="supernet",
                   help="start quantized nets from the supernet's weights (default) or from scratch")
    p.add_argument("--parts", type=lambda text: [t.strip() for t in text.split(",") if t.strip()], default=None,
                   metavar="PART,...", help="which kinds of net the benchmark holds, trained and expected in "
                   "its results (default all: float,uniform,searched,random,sensitivity,ranking)")
    p.add_argument("--uniform", type=_parse_pair, action="append", default=None, metavar="W,A",
                   help="a uniform net to fine-tune, repeatable (default: every pair of the space that fits "
                   "under some budget; a pair outside the space, e.g. 8,8, starts from the float net)")
    p.add_argument("--net", metavar="LABEL", help="the net's label in the results (default: the config's name)")
    p.add_argument("--random-budgets", type=lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
                   default=None, metavar="NAME,...", help="the budgets that get a random-search net (default: all)")
    p.add_argument("--rank-archs", type=int, default=16, metavar="N", help="the ranking sample's size (default 16)")
    p.add_argument("--rank-band", metavar="NAME", help="draw the ranking sample inside this budget's band, spread "
                   "over the supernet's score (default: over the whole BitOps range)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the results from the finished nets")
    p.add_argument("--state", metavar="DIR", help="keep the measured nets' files and each seed's supernet and search "
                   "checkpoints (not the fine-tuned nets') in DIR after every piece, and continue from them with "
                   "--resume (e.g. committed beside the results)")
    p.add_argument("--targets", metavar="TARGETS.yaml", help="judge the results against the benchmark's targets "
                   "(e.g. benchmarks/configs/accuracy_targets.yaml)")


def _config(args: argparse.Namespace) -> Config:
    """The command's config with its ``--set`` overrides: read before any stage (and torch) loads,
    so a bad config fails at once."""
    from qspos.runtime.config import load_config

    return load_config(args.config, args.overrides)


def cmd_cost(args: argparse.Namespace) -> int:
    from qspos.runtime.files import load_arch

    # read the user's files before importing torch/Brevitas (seconds): bad input fails at once
    cfg = _config(args)
    arch_file = load_arch(args.arch) if args.arch else None

    from qspos.core.cost import CostModel
    from qspos.runtime.build import build_supernet
    from qspos.runtime.progress import stdout, table

    supernet = build_supernet(cfg)
    model = CostModel(supernet, cfg.input_shape)
    if arch_file is not None:
        arch = supernet.space.validate(arch_file, domain=False)
        label = args.arch
    else:
        w, a = args.uniform or max(supernet.space.points[0].pairs, key=lambda p: p[0] * p[1])
        arch, label = supernet.space.uniform(w, a), f"uniform W{w}A{a}"
    cost = model.cost(arch)
    if args.json:
        print(json.dumps(cost.to_dict()))
        return 0
    rows = [[lc.name, lc.in_channels, lc.out_channels, lc.w_bits, lc.a_bits, lc.macs, lc.bitops]
            for lc in cost.layers]
    stdout.print(table(f"cost of {label}", ["layer", "in", "out", "w", "a", "MACs", "BitOps"], rows))
    stdout.print(
        f"MACs {cost.macs / 1e6:.3f} M   BitOps {cost.bitops / 1e9:.4f} G "
        f"(searched part {cost.searched_bitops / 1e9:.4f} G)   "
        f"weights {cost.size_bits / 8 / 1024:.1f} KiB (+{cost.bias_params} float bias params)"
    )
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.runtime.progress import stdout, table
    from qspos.stages.space import describe_space

    space = describe_space(cfg)
    if args.json:
        print(json.dumps(space))
        return 0
    for note in space["notes"]:
        stdout.print(f"note: {note}")
    rows = [[p["name"], " ".join(f"W{w}A{a}" for w, a in p["pairs"]),
             " ".join(f"{m:g}" for m in p["widths"]) if p["widths"] else "-", ", ".join(p["bits_layers"]),
             ", ".join(p["width_layers"]) or "-"] for p in space["choice_points"]]
    stdout.print(table(f"choice points of {space['model']} ({space['size']:.3g} archs)",
                       ["choice point", "bits", "widths", "bits of", "width of"], rows))
    rows = [[e["name"], e["kind"], e["in_channels"], e["out_channels"], e["choice_point"] or e["role"],
             e["width_point"] or "-", "signed" if e["input_signed"] else "unsigned", e["width_note"]]
            for e in space["layers"]]
    stdout.print(table("layers", ["layer", "kind", "in", "out", "bits from", "out width from", "input",
                                  "why its outputs keep their width"], rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.runtime.distributed import is_main_process
    from qspos.runtime.numbers import percent
    from qspos.runtime.progress import console, stdout, table
    from qspos.stages.train import train_supernet

    res = train_supernet(cfg, args.out, resume=args.resume)
    if not is_main_process():
        return 0
    f = res.fit
    rows = [
        ["steps", f.steps], ["epochs", round(f.epochs, 3)], ["train loss (last interval)", f.loss],
        ["train top-1 (last interval)", percent(f.top1)], ["images/s", round(f.images_per_s)],
        ["time (s)", round(f.seconds)], ["val top-1, largest path", percent(res.val_top1_max)],
        ["val top-1, smallest path", percent(res.val_top1_min)], ["checkpoint", str(f.checkpoint)],
    ]
    stdout.print(table(f"supernet training: {cfg.name}", ["name", "value"], rows))
    console.print(f"next: qspos search {args.config}" + (f" --out {args.out}" if args.out else ""))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.stages.search import search

    search(cfg, args.out, resume=args.resume)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.stages.sensitivity import sensitivity

    sensitivity(cfg, args.out)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from qspos.runtime.files import load_arch

    cfg = _config(args)
    arch = load_arch(args.arch) if args.arch else None
    from qspos.runtime.distributed import is_main_process
    from qspos.runtime.progress import ScoreFormat, stdout
    from qspos.stages.finetune import finetune, results_table

    results = finetune(cfg, args.out, arch=arch, pick=args.pick, resume=args.resume)
    if is_main_process():
        stdout.print(results_table(results, f"fine-tuned nets: {cfg.name}", ScoreFormat(cfg.score)))
    return 0


def cmd_float(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.runtime.distributed import is_main_process
    from qspos.runtime.progress import console
    from qspos.runtime.rundir import RunDir
    from qspos.stages.float_baseline import train_float
    from qspos.stages.report import write_report

    run = RunDir.of(cfg, args.out)
    train_float(cfg, run, resume=args.resume)
    if is_main_process() and run.report.is_file():  # the run's report shows the baseline from now on
        console.print(f"rewrote {write_report(run)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """A table, and a JSON file beside the checkpoint (printed instead where it cannot be written)."""
    from qspos.runtime.files import load_arch

    cfg = _config(args)
    arch = load_arch(args.arch) if args.arch else None
    from qspos.runtime.files import write_json
    from qspos.runtime.numbers import percent
    from qspos.runtime.progress import console, stdout, table
    from qspos.stages.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(cfg, args.checkpoint, arch)
    rows = [["test top-1", percent(res.test_top1)], ["test top-5", percent(res.test_top5)],
            ["MACs (M)", f"{res.macs / 1e6:.3f}"], ["BitOps (G)", f"{res.bitops / 1e9:.4f}"],
            ["searched BitOps (G)", f"{res.searched_bitops / 1e9:.4f}"],
            ["weights (KiB)", f"{res.size_bits / 8 / 1024:.2f}"], ["arch", res.arch.digest()]]
    stdout.print(table(f"{res.kind} checkpoint {res.checkpoint}", ["name", "value"], rows))
    try:
        write_json(res.json_path, res.to_dict())
        console.print(f"wrote {res.json_path}")
    except OSError:  # a read-only place: the numbers still reach the user
        print(json.dumps(res.to_dict()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A table; exit 1 if an exported file failed its check against PyTorch."""
    from qspos.runtime.distributed import is_main_process

    if not is_main_process():  # under torchrun, one process exports
        return 0
    from qspos.runtime.progress import console, stdout
    from qspos.runtime.rundir import RunDir
    from qspos.stages.export import export, export_table

    run = RunDir(args.run_dir)
    run.read_config()  # "not a run directory" before any work
    results = export(run, args.formats)
    stdout.print(export_table(results))
    for r in results:
        for fmt, why in r.skipped.items():
            console.print(f"[yellow]{r.name}: {fmt} skipped: {why}")
    if _export_exit_code(results):
        return 1
    console.print(f"wrote {run.path / run.EXPORT}")
    return 0


def _export_exit_code(results: list[ExportResult]) -> int:
    """1, with a line naming them, when exported files failed their check against PyTorch, else 0:
    ``qspos export`` and ``qspos run`` both exit with it, so that no script ships a failed export."""
    from qspos.runtime.progress import console

    failed = [f"{r.name} ({', '.join(r.failed())})" for r in results if r.check_ok is False]
    if failed:
        console.print(f"[red]exported files disagree with PyTorch: {'; '.join(failed)} (see each summary.json)")
        for r in results:
            for why in r.failures():
                console.print(f"[red]  {r.name} {why}")
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Exit 1 when an exported file failed its check, as ``qspos export`` does."""
    cfg = _config(args)
    from qspos.stages.run import run

    return _export_exit_code(run(cfg, args.out, resume=args.resume).export)


def bench_plan(args: argparse.Namespace) -> Plan:
    """The :class:`qspos.stages.bench.Plan` of a bench invocation (with --report-only, what the
    finished benchmark holds)."""
    from qspos.stages.bench import PARTS, Plan

    parts = tuple(args.parts) if args.parts is not None else PARTS
    uniform = None if args.uniform is None else tuple(args.uniform)
    return Plan(seeds=args.seeds, init=args.init, parts=parts, uniform=uniform, net=args.net,
                random_budgets=args.random_budgets, rank_archs=args.rank_archs, rank_band=args.rank_band)


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.stages.bench import Targets, run_bench

    out = args.out or f"{cfg.runs_dir}/{cfg.name}-bench"
    plan = bench_plan(args)
    targets = Targets.load(args.targets, plan.net or cfg.name) if args.targets else None
    run_bench(cfg, out, out, plan, resume=args.resume, report_only=args.report_only,
              command=" ".join(["qspos", *sys.argv[1:]]), targets=targets, state=args.state)
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from qspos.stages.latency import measure_latency

    table = measure_latency(cfg, args.table, reps=args.reps, batch_size=args.batch_size, engine=args.engine)
    n = sum(len(d) for d in table.entries.values())
    print(f"wrote {n} layer settings of {len(table.entries)} layers to {args.table}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "cost": cmd_cost, "train": cmd_train, "search": cmd_search, "sensitivity": cmd_sensitivity,
    "finetune": cmd_finetune, "float": cmd_float,
    "eval": cmd_eval,
    "export": cmd_export, "run": cmd_run, "latency": cmd_latency, "space": cmd_space, "bench": cmd_bench,
}


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's stop, ``kill``): handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return COMMANDS[args.command](args)
    except QsposError as e:
        print(f"qspos: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return e.exit_code
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, _Terminated) else "interrupted"
        print(f"qspos: {how}; what was saved is kept: rerun with --resume to continue", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
