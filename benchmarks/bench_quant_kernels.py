"""Train-step time of one fixed-arch quantized network with each fake-quantization path.

The network: six 3x3 convs (32-32-pool-64-64-pool-128-128) with BatchNorm and ReLU, global
average pooling and a linear classifier, on 28x28x1 inputs (Fashion-MNIST size). The first conv
and the classifier are 8-bit, the four inner convs --w-bits/--a-bits. A step is forward,
cross-entropy, backward and an SGD step (momentum 0.9) on a fixed random batch.

Variants (``--variants``):
  float           plain torch.nn float network, eager
  brevitas        qspos layers extracted with ``to_static()``: Brevitas QuantConv2d/QuantLinear with
                  the default Brevitas quantizers
  brevitas_fused  the same Brevitas layers with quant_kernels' fused tensor_quant (set_fused_kernels)
  reference       qspos searchable layers, backend "reference"
  fused           qspos searchable layers, backend "fused" (eager)
  compiled        qspos searchable layers, backend "compiled" (inductor kernel per quantizer call)
  compiled_model  ``torch.compile`` of the whole searchable network, backend "compiled" (the
                  quantizers trace into the model's graph; graph breaks in the layers split it)
  float_compiled  ``torch.compile`` of the whole float network (what compilation gives float)
  brevitas_fused_compiled  (not run by default) ``torch.compile`` of the brevitas_fused network;
                  Brevitas' QuantTensor breaks the graph at every layer (``signed.item()``)

Timing: all variants live in one process and their steps are interleaved (one step of each
variant per round, --rounds rounds), so that all see the same machine load. Both the median
step and the minimum step (the least disturbed one: the better estimate when other processes
compete for the cores) are reported, each as a ratio to the float network's, and the process'
CPU time per step (all threads, minimum).
Memory: the bytes autograd keeps for backward in one step (unique storages of saved tensors,
counted with saved_tensors_hooks), and the peak RSS of a fresh subprocess running --mem-steps
steps of the variant alone, above its RSS before the model was built (compiled variants include
the compiler's own peak).

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
import subprocess
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


def build(variant: str, w_bits: int, a_bits: int):
    """The benchmark network for a variant (see the module docstring)."""
    import torch
    from torch import nn

    from qspos.layers import SearchableConv2d, SearchableLinear
    from quant_kernels.brevitas_impl import set_fused_kernels

    is_float = variant.startswith("float")
    searchable = variant in ("reference", "fused", "compiled", "compiled_model")
    backend = "compiled" if variant == "compiled_model" else variant

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
    model = nn.Sequential(*layers)
    if variant.startswith("brevitas_fused"):
        set_fused_kernels(model)
    if variant.endswith("_compiled") or variant == "compiled_model":
        model = torch.compile(model)
    return model


def saved_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for backward during one step."""
    import torch

    seen: dict[int, int] = {}

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
    model = build(variant, args.w_bits, args.a_bits)
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


def peak_memory(args: argparse.Namespace) -> dict:
    """In a fresh process: peak RSS above the pre-build RSS over --mem-steps steps."""
    exact = reset_peak_rss()  # else ru_maxrss, which may be the import's peak
    base = _status_mib("VmRSS")
    step = make_step(args.one, args)
    for _ in range(args.mem_steps):
        step()
    peak = _status_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_delta_mib": peak - base}


def time_variants(variants: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Warm up every variant (compiling where asked), then time interleaved steps."""
    steps, warmup_s = {}, {}
    for v in variants:
        t0 = time.perf_counter()
        steps[v] = make_step(v, args)
        for _ in range(args.warmup):
            steps[v]()
        warmup_s[v] = time.perf_counter() - t0
        print(f"warm-up {v:24s} {warmup_s[v]:6.1f} s", flush=True)
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[v]()
            wall[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
        print(f"round {r}: " + "  ".join(f"{v} {wall[v][-1] * 1e3:.0f}" for v in variants), flush=True)
    return {v: {"step_ms": min(wall[v]) * 1e3, "median_ms": statistics.median(wall[v]) * 1e3,
                "all_ms": [round(t * 1e3, 1) for t in wall[v]],
                "cpu_ms": min(cpu[v]) * 1e3, "images_per_s": args.batch / min(wall[v]),
                "saved_for_backward_mib": saved_bytes(steps[v]) / 2**20, "warmup_s": warmup_s[v]}
            for v in variants}


def machine_info() -> dict:
    import brevitas
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "brevitas": brevitas.__version__,
            "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=15, help="interleaved timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mem-steps", type=int, default=2, help="steps per memory subprocess (0: skip)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--a-bits", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/quant_kernels.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    # The compiled variants share code objects (nn.Sequential.forward...) in this one process: do
    # not let Dynamo's per-code recompile limit (8) silently send the later ones back to eager.
    torch._dynamo.config.recompile_limit = 64
    if args.one:
        print(json.dumps(peak_memory(args)))
        return

    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS + OPTIONAL)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS + OPTIONAL}")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    machine = machine_info()
    results = time_variants(variants, args)
    for v in variants if args.mem_steps else []:
        cmd = [sys.executable, __file__, "--one", v, "--mem-steps", str(args.mem_steps), "--batch",
               str(args.batch), "--w-bits", str(args.w_bits), "--a-bits", str(args.a_bits),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"{v} failed:\n{out.stderr[-3000:]}")
        results[v].update(json.loads(out.stdout.strip().splitlines()[-1]))
    machine["load_avg_at_end"] = os.getloadavg()

    ratios = {}
    for stat in ("median_ms", "step_ms", "cpu_ms"):
        name = {"median_ms": "median", "step_ms": "min", "cpu_ms": "CPU"}[stat]
        if "float" in results:
            ratios.update({f"{v}/float ({name})": results[v][stat] / results["float"][stat] for v in results})
        if "brevitas" in results:
            ratios.update({f"brevitas/{v} ({name})": results["brevitas"][stat] / results[v][stat]
                           for v in results if v != "brevitas"})
    report = {"command": command, "machine": machine,
              "network": "6x conv3x3 (32,32,p,64,64,p,128,128)+BN+ReLU, GAP, linear; 28x28x1 input",
              "settings": {k: getattr(args, k) for k in
                           ("batch", "w_bits", "a_bits", "rounds", "warmup", "threads")},
              "results": results, "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as a Markdown table (written next to the JSON)."""
    res, m = report["results"], report["machine"]
    nan = float("nan")

    def ratio(v: str, base: str, stat: str) -> float:
        return res[v][stat] / res[base][stat] if base in res else nan

    lines = [
        "# quant_kernels: train-step time", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
        f"brevitas {m['brevitas']}; load average (1, 5, 15 min) at start {m['load_avg_at_start']}, "
        f"at end {m.get('load_avg_at_end')}", "",
        f"Network: {report['network']}; settings {report['settings']}", "",
        "| variant | median ms | x float (median) | min ms | x float (min) | default Brevitas / variant (median) "
        "| img/s (median) | CPU ms | saved for backward MiB | peak RSS delta MiB | warm-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v, r in res.items():
        lines.append(
            f"| {v} | {r['median_ms']:.1f} | {ratio(v, 'float', 'median_ms'):.3f} | {r['step_ms']:.1f} | "
            f"{ratio(v, 'float', 'step_ms'):.3f} | {1 / ratio(v, 'brevitas', 'median_ms'):.2f} | "
            f"{report['settings']['batch'] / r['median_ms'] * 1e3:.0f} | {r['cpu_ms']:.1f} | "
            f"{r['saved_for_backward_mib']:.1f} | {r.get('peak_rss_delta_mib', nan):.0f} | {r['warmup_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
