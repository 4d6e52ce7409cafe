"""Train-step time of one fixed-arch quantized network with each fake-quantization path.

Networks (``--net``):
  conv6     six 3x3 convs (32-32-pool-64-64-pool-128-128) with BatchNorm and ReLU, global average
            pooling and a linear classifier, on 28x28x1 inputs (Fashion-MNIST size). The first conv
            and the classifier are 8-bit, the four inner convs --w-bits/--a-bits.
  supernet  the reference Fashion-MNIST supernet (``--config``, ResNet-14) on one sampled arch
            (``--seed``): the searchable variants run the supernet on that path, the Brevitas and
            float variants run ``supernet.extract(arch)`` and its float copy.
A step is forward, cross-entropy, backward and an SGD step (momentum 0.9) on a fixed random batch.

Variants (``--variants``):
  float           plain torch.nn float network, eager
  brevitas        qspos layers extracted with ``to_static()``: Brevitas QuantConv2d/QuantLinear with
                  the default Brevitas quantizers
  brevitas_fused  the same Brevitas layers with quant_kernels' fused tensor_quant (set_fused_kernels)
  reference       qspos searchable layers, backend "reference"
  fused           qspos searchable layers, backend "fused" (eager)
  compiled        qspos searchable layers, backend "compiled" (inductor kernel per quantizer call)
  compiled_model  ``torch.compile`` of the whole searchable network, backend "compiled" (the
                  quantizers trace into the model's graph: one graph, no breaks)
  float_compiled  ``torch.compile`` of the whole float network (what compilation gives float)
  brevitas_fused_compiled  (not run by default) ``torch.compile`` of the brevitas_fused network;
                  Brevitas' QuantTensor breaks the graph at every layer (``signed.item()``)

Timing: each variant runs in its own worker process (so compiled variants do not share Dynamo's
per-code caches and limits), all built and warmed up first; then --rounds rounds of one step per
variant, in turn, so that all variants see the same machine load. Both the median step and the
minimum step (the least disturbed one: the better estimate when other processes compete for the
cores) are reported, each as a ratio to the float network's, and the worker's CPU time per step
(all threads, minimum). On a shared virtual machine a process can stay slower than its twin for
its whole life (page placement, neighbours), so --repeats N starts N fresh sets of workers and
the headline ratios are the medians over the repeats.
Memory: the bytes autograd keeps for backward in one step (unique storages of saved tensors,
counted with saved_tensors_hooks), and the worker's peak RSS during the timed steps above its RSS
before the model was built (the kernel's high-water mark is reset after the warm-up, so a
compiler's transient peak is left out; what the compiler keeps resident is in).

    .venv/bin/python benchmarks/bench_quant_kernels.py                # writes benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ["float", "brevitas", "brevitas_fused", "reference", "fused", "compiled", "compiled_model",
            "float_compiled"]
OPTIONAL = ["brevitas_fused_compiled"]
CHANNELS = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
POOL_AFTER = {1, 3}


def build(variant: str, args: argparse.Namespace):
    """The benchmark network for a variant (see the module docstring)."""
    import torch

    from quant_kernels.brevitas_impl import set_fused_kernels

    make = build_supernet_path if args.net == "supernet" else build_conv6
    model = make(variant, args)
    if variant.startswith("brevitas_fused"):
        set_fused_kernels(model)
    if variant.endswith("_compiled") or variant == "compiled_model":
        model = torch.compile(model)
    return model


def build_supernet_path(variant: str, args: argparse.Namespace):
    """The Fashion-MNIST supernet on one sampled path, or that path extracted (Brevitas, float)."""
    import random

    from bench_train_step import float_copy

    from qspos.runtime.build import build_supernet
    from qspos.runtime.config import load_config

    supernet = build_supernet(load_config(args.config))
    arch = supernet.space.sample(random.Random(args.seed))
    if variant.startswith("float"):
        return float_copy(supernet.extract(arch))
    if variant.startswith("brevitas"):
        return supernet.extract(arch)
    supernet.set_quant_backend("compiled" if variant.startswith("compiled") else variant)
    supernet.set_arch(arch)
    return supernet


def build_conv6(variant: str, args: argparse.Namespace):
    """The six-conv network (see the module docstring)."""
    from torch import nn

    from qspos.core.layers import SearchableConv2d, SearchableLinear

    w_bits, a_bits = args.w_bits, args.a_bits
    is_float = variant.startswith("float")
    searchable = variant in ("reference", "fused", "compiled", "compiled_model")
    backend = "compiled" if variant.startswith("compiled") else variant

    def quant(layer, w, a):
        layer.configure_bits((w,), (a,))
        layer.set_active(w, a)
        if searchable:
            layer.weight_quant.backend = layer.input_quant.backend = backend
            return layer
        return layer.to_static()

    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(CHANNELS):
        if is_float:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        else:
            first = i == 0
            conv = quant(SearchableConv2d(c_in, c_out, 3, padding=1, input_signed=first),
                         8 if first else w_bits, 8 if first else a_bits)
        layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
        if i in POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers.append(nn.Linear(128, 10) if is_float else quant(SearchableLinear(128, 10), 8, 8))
    return nn.Sequential(*layers)


def saved_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for backward during one step."""
    import torch

    seen: dict[int, int] = {}

    @torch.compiler.disable
    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_step(variant: str, args: argparse.Namespace):
    """A closure running one training step of a freshly built variant."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = build(variant, args)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def worker(conn, variant: str, args: argparse.Namespace) -> None:
    """One variant in its own process (its own Dynamo caches), stepping when the parent asks."""
    import torch

    torch.set_num_threads(args.threads)
    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    step = make_step(variant, args)
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - t0
    exact = reset_peak_rss()  # training peak from here on, not the compiler's
    conn.send(warmup_s)
    while conn.recv() == "step":
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        conn.send((time.perf_counter() - t0, time.process_time() - c0))
    peak = _status_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send({"peak_rss_delta_mib": peak - base, "saved_for_backward_mib": saved_bytes(step) / 2**20})


def time_variants(variants: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """One worker process per variant, warmed up one after the other; then rounds of one step
    per variant, in turn, so that all variants see the same machine load."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    conns, procs, warmup_s = {}, [], {}
    for v in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, v, args), daemon=True)
        proc.start()
        conns[v], warmup_s[v] = parent, parent.recv()
        procs.append(proc)
        print(f"warm-up {v:24s} {warmup_s[v]:6.1f} s", flush=True)
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            time.sleep(0.05)  # let the previous worker's OpenMP threads stop spinning
            conns[v].send("step")
            w, c = conns[v].recv()
            wall[v].append(w)
            cpu[v].append(c)
        print(f"round {r}: " + "  ".join(f"{v} {wall[v][-1] * 1e3:.0f}" for v in variants), flush=True)
    results = {}
    for v in variants:
        conns[v].send("finish")
        results[v] = {"median_ms": statistics.median(wall[v]) * 1e3, "step_ms": min(wall[v]) * 1e3,
                      "cpu_ms": min(cpu[v]) * 1e3, "all_ms": [round(t * 1e3, 1) for t in wall[v]],
                      "warmup_s": warmup_s[v], **conns[v].recv()}
    for proc in procs:
        proc.join(timeout=60)
    return results


def machine_info() -> dict:
    import brevitas
    import torch
    from bench_cost import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "brevitas": brevitas.__version__,
            "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}


STATS = {"median_ms": "median", "step_ms": "min", "cpu_ms": "CPU"}
NETWORKS = {"conv6": "6x conv3x3 (32,32,p,64,64,p,128,128)+BN+ReLU, GAP, linear; 28x28x1 input",
            "supernet": "Fashion-MNIST supernet ({config}, arch sampled with seed {seed}); 28x28x1 input"}


def ratios(results: dict[str, dict]) -> dict[str, float]:
    """Every variant against the float step (by each statistic) and default Brevitas against it."""
    out = {}
    for stat, name in STATS.items():
        if "float" in results:
            out.update({f"{v}/float ({name})": results[v][stat] / results["float"][stat] for v in results})
        if "brevitas" in results:
            out.update({f"brevitas/{v} ({name})": results["brevitas"][stat] / results[v][stat] for v in results})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", choices=sorted(NETWORKS), default="conv6")
    p.add_argument("--config", default=str(ROOT / "configs/fashion_mnist.yaml"), help="for --net supernet")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled arch (--net supernet)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=15, help="interleaved timed steps per variant")
    p.add_argument("--repeats", type=int, default=1, help="fresh sets of worker processes")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--w-bits", type=int, default=4, help="inner layers' weight bits (--net conv6)")
    p.add_argument("--a-bits", type=int, default=4, help="inner layers' activation bits (--net conv6)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=None, help="default: benchmarks/results/quant_kernels[_NET].json")
    p.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing --out JSON")
    args = p.parse_args()
    suffix = "" if args.net == "conv6" else f"_{args.net}"
    out = Path(args.out or ROOT / f"benchmarks/results/quant_kernels{suffix}.json")

    if args.markdown_only:
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS + OPTIONAL)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS + OPTIONAL}")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    machine = machine_info()
    repeats = []
    for r in range(args.repeats):
        print(f"repeat {r + 1}/{args.repeats}", flush=True)
        results = time_variants(variants, args)
        repeats.append({"results": results, "ratios": {k: round(v, 4) for k, v in ratios(results).items()}})
    machine["load_avg_at_end"] = os.getloadavg()
    headline = {k: round(statistics.median(rep["ratios"][k] for rep in repeats), 3) for k in repeats[0]["ratios"]}
    report = {"command": command, "machine": machine,
              "network": NETWORKS[args.net].format(config=Path(args.config).name, seed=args.seed),
              "settings": {k: getattr(args, k) for k in
                           ("net", "batch", "w_bits", "a_bits", "rounds", "repeats", "warmup", "threads")},
              "ratios": headline, "repeats": repeats}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as Markdown tables (written next to the JSON)."""
    reps, m, ratio = report["repeats"], report["machine"], report["ratios"]
    nan = float("nan")
    variants = list(reps[0]["results"])

    def med(v: str, key: str) -> float:
        return statistics.median(rep["results"][v].get(key, nan) for rep in reps)

    lines = [
        "# quant_kernels: train-step time", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
        f"brevitas {m['brevitas']}; load average (1, 5, 15 min) at start {m['load_avg_at_start']}, "
        f"at end {m.get('load_avg_at_end')}", "",
        f"Network: {report['network']}; settings {report['settings']}", "",
        "Ratios to the float eager step by three statistics: the median wall step, the minimum wall "
        "step and the minimum CPU time of a step (least sensitive to other load on a shared or virtual "
        f"machine). Each is the median over {len(reps)} repeat(s) with fresh worker processes; times "
        "and memory are medians over the repeats too.", "",
        "| variant | median ms | x float (median) | x float (min) | x float (CPU) "
        "| default Brevitas / variant (CPU) | img/s (median) | saved for backward MiB | peak RSS delta MiB "
        "| warm-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        lines.append(
            f"| {v} | {med(v, 'median_ms'):.1f} | {ratio.get(f'{v}/float (median)', nan):.3f} | "
            f"{ratio.get(f'{v}/float (min)', nan):.3f} | {ratio.get(f'{v}/float (CPU)', nan):.3f} | "
            f"{ratio.get(f'brevitas/{v} (CPU)', nan):.2f} | "
            f"{report['settings']['batch'] / med(v, 'median_ms') * 1e3:.0f} | "
            f"{med(v, 'saved_for_backward_mib'):.1f} | {med(v, 'peak_rss_delta_mib'):.0f} | {med(v, 'warmup_s'):.1f} |")
    if len(reps) > 1:
        lines += ["", "Spread: x float (median) in each repeat.", "",
                  "| variant | " + " | ".join(f"repeat {i + 1}" for i in range(len(reps))) + " |",
                  "|---|" + "---:|" * len(reps)]
        lines += [f"| {v} | " + " | ".join(f"{rep['ratios'].get(f'{v}/float (median)', nan):.3f}" for rep in reps)
                  + " |" for v in variants]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
