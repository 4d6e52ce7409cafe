"""The ``qspos`` command line (contract in DESIGN.md). Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from qspos.errors import QsposError


def _parse_pair(text: str) -> tuple[int, int]:
    try:
        w, a = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,A (e.g. 4,4), got {text!r}") from None
    if not (1 <= w <= 16 and 1 <= a <= 16):
        raise argparse.ArgumentTypeError(f"bit-widths must be 1-16, got {text!r}")
    return w, a


def _common(p: argparse.ArgumentParser, out: bool = True, resume: bool = True) -> None:
    p.add_argument("config", help="YAML config file")
    if out:
        p.add_argument("--out", help="run directory (default: runs/NAME from the config)")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the run's checkpoints")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qspos", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    _common(sub.add_parser("run", help="train -> search -> finetune -> eval -> export -> report"))
    _common(sub.add_parser("train", help="train the supernet with uniform path sampling"))
    _common(sub.add_parser("search", help="evolutionary search under the configured budgets"))
    p = sub.add_parser("finetune", help="fine-tune the chosen archs as standalone Brevitas nets")
    _common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--arch", help="arch YAML/JSON file to fine-tune")
    g.add_argument("--pick", type=int, help="fine-tune only the N-th search result (0-based)")

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test split")
    _common(p, out=False, resume=False)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) to evaluate")
    p.add_argument("--arch", help="arch file (needed for a supernet checkpoint)")

    p = sub.add_parser("export", help="export a run's fine-tuned nets")
    p.add_argument("run_dir", help="run directory holding finetune/")
    p.add_argument("--format", dest="formats", action="append",
                   choices=["onnx-qcdq", "qonnx", "packed"], help="repeatable; default: all")

    p = sub.add_parser("cost", help="MACs, BitOps and size of an arch, per layer")
    _common(p, out=False, resume=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--arch", help="arch YAML/JSON file")
    g.add_argument("--uniform", type=_parse_pair, metavar="W,A",
                   help="every choice point at W-bit weights, A-bit activations, base width")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def cmd_cost(args: argparse.Namespace) -> int:
    from qspos.arch import Arch
    from qspos.config import load_config

    # read the user's files before importing torch/Brevitas (seconds): bad input fails at once
    cfg = load_config(args.config, args.overrides)
    arch_file = Arch.load(args.arch) if args.arch else None

    from qspos.cost import CostModel
    from qspos.progress import table
    from qspos.supernet import build_supernet

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
    from rich.console import Console

    rows = [[lc.name, lc.in_channels, lc.out_channels, lc.w_bits, lc.a_bits, lc.macs, lc.bitops]
            for lc in cost.layers]
    con = Console()
    con.print(table(f"cost of {label}", ["layer", "in", "out", "w", "a", "MACs", "BitOps"], rows))
    con.print(
        f"MACs {cost.macs / 1e6:.3f} M   BitOps {cost.bitops / 1e9:.4f} G "
        f"(searched part {cost.searched_bitops / 1e9:.4f} G)   "
        f"weights {cost.size_bits / 8 / 1024:.1f} KiB (+{cost.bias_params} float bias params)"
    )
    return 0


def _stage(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "cost": cmd_cost,
    "train": _stage("qspos.train", "cli_train"),
    "search": _stage("qspos.search", "cli_search"),
    "finetune": _stage("qspos.finetune", "cli_finetune"),
    "eval": _stage("qspos.finetune", "cli_eval"),
    "export": _stage("qspos.export", "cli_export"),
    "run": _stage("qspos.pipeline", "cli_run"),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import qspos  # noqa: F401  (quiets torch's CUDA-toolkit warning before Brevitas loads)

        return COMMANDS[args.command](args)
    except QsposError as e:
        print(f"qspos: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qspos: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
