"""``report.md`` of a run: what the pipeline found, in tables a reader can check at a glance.

Built only from the files the stages wrote (``metrics.jsonl``, ``search/results.json``,
``finetune/*/result.json``, ``export/*/summary.json``), so it can be regenerated at any time.
Per budget it sets the chosen arch against the uniform-precision net of the budget (and the
best of the random search), with the Pareto plot of the search embedded. Scores are the run's
(``Config.score``): top-1 in % with its binomial standard error, or a caller's score as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from qspos.core.cost import CostModel
from qspos.core.stats import binomial_se
from qspos.formats.check import LOGIT_RTOL
from qspos.results.pareto import pareto_plot
from qspos.results.search_results import SearchResult, choice_text
from qspos.runtime.build import build_supernet
from qspos.runtime.files import write_text
from qspos.runtime.numbers import kib, millions, points
from qspos.runtime.progress import ScoreFormat, read_metrics
from qspos.runtime.rundir import RunDir, holds_run_dir


@holds_run_dir
def write_report(run_dir: str | Path | RunDir, given: nn.Module | None = None) -> Path:
    """(Re)write ``run_dir/report.md`` (and its plot) from the run's outputs (``given``: the
    caller's model, for a run made from one); returns its path."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    write_text(run.report, render_report(run, given))
    if run.search_results.is_file():
        _plot(run, SearchResult.load(run.search_results), _read_all(run.finetune_results()), _float(run),
              ScoreFormat(run.read_config().score))
    return run.report


def render_report(run: RunDir, given: nn.Module | None = None) -> str:
    cfg = run.read_config()
    finetuned = _read_all(run.finetune_results())
    exported = _read_all(run.export_summaries())
    score = ScoreFormat(cfg.score)
    scores = ("Accuracies in % ± their binomial standard error" if score.accuracy
              else f"Scores are `{score.name}` as the run's score function gave them (higher is better)")
    out = [f"# qspos report: {cfg.name}", "",
           f"Model `{cfg.model.name}` {cfg.model.args or ''} on `{cfg.data.dataset}`; "
           f"fine-tuning init `{cfg.finetune.init}`. {scores}, BitOps "
           "in M, weights in KiB. *val* is the split held out of the training data (the search's), *test* the "
           "test split.", ""]
    n_val = cfg.data.val_size if cfg.search.val_images is None else min(cfg.search.val_images, cfg.data.val_size)
    out += _float_section(_float(run), score)
    out += _supernet_section(run.metrics, n_val, score)
    budgets: set[str] = set()
    if run.search_results.is_file():
        search = SearchResult.load(run.search_results)
        budgets = {b.name for b in search.budgets}
        costs = CostModel(build_supernet(cfg, given=given), cfg.input_shape)
        out += _budget_section(search, finetuned, costs, score)
        out += _arch_section(search)
        se = " ± SE" if score.accuracy else ""
        out += [f"## Search: Pareto front ({search.evaluations} archs evaluated)", "",
                f"![{score.name} against BitOps]({run.report_plot.name})", "",
                f"The front of the supernet's val {score.name} (line), each budget's searched and uniform nets "
                f"(stars, crosses), the fine-tuned nets' test {score.name}{se} (dots), and the budgets' BitOps "
                "bounds (dashed). Every evaluated arch: [search/pareto.png](search/pareto.png); the front as a "
                "table: [search/pareto.md](search/pareto.md).", ""]
    extra = [r for name, r in finetuned.items() if name.removesuffix("-uniform") not in budgets]
    if extra:
        out += ["## Other fine-tuned nets", "", "| net | BitOps | weights | val before | val | test |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['name']} | {millions(r['bitops'])} | {kib(r['size_bits'])} "
                f"| {_s(score, r['val_top1_before'], r.get('val_images'))} "
                f"| {_ft(r, score)} |" for r in extra]
        out.append("")
    if exported:
        out += _export_section(exported)
    return "\n".join(out)


def _float(run: RunDir) -> dict | None:
    """The run's float baseline (``qspos float``), if it has one."""
    path = run.float_net.result
    return json.loads(path.read_text()) if path.is_file() else None


def _float_section(result: dict | None, score: ScoreFormat) -> list[str]:
    if result is None:
        return []
    return ["## Float baseline", "",
            f"The backbone unquantized (32-bit operands), trained from scratch with the fine-tuning recipe "
            f"({result['steps']} steps): test {score.name} {_s(score, result['test_top1'], result['test_images'])}, "
            f"val {score.name} {_s(score, result['val_top1'], result['val_images'])}; "
            f"{millions(result['bitops'])} M BitOps, {kib(result['size_bits'])} KiB of weights. "
            "The line across the plot below.", ""]


def _supernet_section(metrics: Path, n_val: int, score: ScoreFormat) -> list[str]:
    rows = [r for r in read_metrics(metrics) if r.get("stage") == "train"]
    vals = [r for r in rows if "val_top1_max" in r]
    if not rows:
        return []
    last = [r for r in rows if "loss" in r]
    lines = ["## Supernet", ""]
    if last:
        top1 = last[-1].get("top1")  # null under a caller's loss: no logits to count it on
        train = "" if top1 is None else f", train top-1 {_p(top1)}"
        lines.append(f"- {last[-1]['step']} steps ({last[-1].get('epoch', '?')} epochs); last training loss "
                     f"{last[-1]['loss']:.3f}{train} (sampled paths)")
    if vals:
        lines.append(f"- val {score.name} after BN recalibration: largest path "
                     f"{_s(score, vals[-1]['val_top1_max'], n_val)}, smallest path "
                     f"{_s(score, vals[-1]['val_top1_min'], n_val)}")
    return lines + [""]


def _budget_section(search: SearchResult, finetuned: dict[str, dict], costs: CostModel,
                    score: ScoreFormat) -> list[str]:
    lines = ["## Per budget: searched arch against the uniform-precision net", "",
             "Supernet val: the supernet's weights after BN recalibration (what the search scored). "
             "Fine-tuned: after quantization-aware training of the standalone net.", "",
             "| budget | net | BitOps | weights | supernet val | fine-tuned val | fine-tuned test |",
             "|---|---|---:|---:|---:|---:|---:|"]
    n = search.val_images
    for b in search.budgets:
        best, ft = b.best[0], finetuned.get(b.name, {})
        use = f" ({100 * b.budget_use:.0f} % of the budget)" if b.budget_use is not None else ""
        filled = f", {len(b.fill)} fill step(s)" if b.fill else ""
        lines.append(f"| {b.name} | searched `{best.digest}`{filled} | {millions(best.bitops)}{use} "
                     f"| {kib(best.size_bits)} | {_s(score, best.val_top1, n)} | {_ft(ft, score)} |")
        u = b.uniform
        if u:
            uft = finetuned.get(f"{b.name}-uniform", {})
            size = kib(costs.uniform(u.w_bits, u.a_bits).size_bits)
            note = "" if u.in_domain else " (outside the space)"
            lines.append(f"| {b.name} | uniform W{u.w_bits}A{u.a_bits}{note} | {millions(u.bitops)} | {size} "
                         f"| {_s(score, u.val_top1, n)} | {_ft(uft, score)} |")
        r = b.random_best
        if r:
            lines.append(f"| {b.name} | random search best `{r.digest}` | {millions(r.bitops)} "
                         f"| {kib(r.size_bits)} | {_s(score, r.val_top1, n)} | - | - |")
    return lines + [""]


def _arch_section(search: SearchResult) -> list[str]:
    archs = [(b.name, b.best[0].arch) for b in search.budgets]
    if not archs:
        return []
    names = list(archs[0][1])
    lines = ["## Chosen archs (weight bits, activation bits, width multiplier)", "",
             "| choice point | " + " | ".join(n for n, _ in archs) + " |",
             "|---|" + "---|" * len(archs)]
    for point in names:
        cells = []
        for _, arch in archs:
            cells.append(choice_text(arch[point].to_dict()).replace(" x", " ×"))
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    return lines + [""]


def _export_section(exported: dict[str, dict]) -> list[str]:
    lines = ["## Exports", "",
             f"Each file run against PyTorch on the same test images (matching: images whose logits are within "
             f"{LOGIT_RTOL:.0%} of the largest): QCDQ (the deployment net: BatchNorm folded, int32 biases, "
             "conv outputs quantized) in onnxruntime as written and optimised, and its test top-1 against the "
             "fine-tuned net's; "
             "QONNX with qonnx's executor, the packed weights as an integer model (quant_kernels.intops, "
             "accumulators against Brevitas' integer codes); the packed size against the cost model's.", "",
             "| net | file | run by | max abs logit diff | matching | same top-1 | test top-1 (PyTorch) "
             "| exact accumulators | check | bytes | size_bits/8 |",
             "|---|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for name, s in exported.items():
        for fmt, file in s["files"].items():
            c = s.get("checks", {}).get(fmt) or {}
            diff, acc = c.get("max_abs_logit_diff"), c.get("exact_accumulators")
            top1 = "-" if c.get("test_top1") is None else (f"{_p(c['test_top1'])} ({_p(c['torch_test_top1'])}; "
                                                           f"optimized {_p(c['optimized_test_top1'])})")
            packed = fmt == "packed"
            lines.append(f"| {name} | {file} | {c.get('runtime', '-')} | {'-' if diff is None else f'{diff:.3g}'} "
                         f"| {_p(c.get('matching'))} | {_p(c.get('top1_agreement'))} | {top1} "
                         f"| {'-' if acc is None else 'yes' if acc else 'no'} "
                         f"| {'-' if not c else 'ok' if c['ok'] else 'FAILED'} "
                         f"| {s.get('packed_bytes') if packed else '-'} "
                         f"| {_num(s.get('theoretical_bytes')) if packed else '-'} |")
    skipped = [f"- {name}: {fmt} skipped: {why}" for name, s in exported.items() for fmt, why in s["skipped"].items()]
    return lines + [""] + (skipped + [""] if skipped else [])


def _read_all(files: list[Path]) -> dict[str, dict]:
    """Each JSON file by the name of its folder (a net's name)."""
    return {p.parent.name: json.loads(p.read_text()) for p in files}


def _ft(result: dict, score: ScoreFormat) -> str:
    """The fine-tuned val and test cells of a net's result (dashes when it was not fine-tuned)."""
    return (f"{_s(score, result.get('val_top1'), result.get('val_images'))} "
            f"| {_s(score, result.get('test_top1'), result.get('test_images'))}")


def _plot(run: RunDir, search: SearchResult, finetuned: dict[str, dict], float_net: dict | None,
          score: ScoreFormat) -> None:
    marks = []
    for b in search.budgets:
        marks.append((f"{b.name} searched", b.best[0].bitops, b.best[0].val_top1))
        if b.uniform and b.uniform.val_top1 is not None:
            marks.append((f"uniform W{b.uniform.w_bits}A{b.uniform.a_bits}", b.uniform.bitops, b.uniform.val_top1))
    tuned = [(name, r["bitops"], r["test_top1"],
              (binomial_se(r["test_top1"], r.get("test_images")) if score.accuracy else None) or 0.0)
             for name, r in finetuned.items()]
    limits = [(b.name, b.limits["bitops"][1]) for b in search.budgets
              if "bitops" in b.limits and b.limits["bitops"][1] is not None]
    baseline = None if float_net is None else ("float (test)", float_net["test_top1"])
    # every arch: search/pareto.png
    pareto_plot(run.report_plot, (), search.pareto, marks, tuned, limits, baseline, score=score)


def _p(v: float | None, n: int | None = None) -> str:
    """An accuracy fraction in %, ± its binomial standard error when ``n`` images are known."""
    return points(v, se=binomial_se(v, n))


def _s(score: ScoreFormat, v: float | None, n: int | None = None) -> str:
    """A value of the run's score: an accuracy as :func:`_p` gives it, a caller's score as it is."""
    if score.accuracy or v is None:
        return _p(v, n)
    return score.number(v)



def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"
