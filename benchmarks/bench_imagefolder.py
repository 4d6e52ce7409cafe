"""Fashion-MNIST from the IDX files against the same images written as an ImageFolder tree:
the same supernet training on both should reach the same accuracy.

    .venv/bin/python benchmarks/bench_imagefolder.py [--set k=v ...]

Before the image-folder path got transforms that suit small images, the folder trained to 22 %
where the IDX files gave 63 % (issue 14). This writes the images configs/quickstart.yaml trains
and validates on, and the whole test split, as PNG class folders; trains the quickstart supernet
on each source with the same seed; and reports the val top-1 of its largest and smallest path
with the binomial standard error in benchmarks/results/imagefolder.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_cost import git_commit, machine
from PIL import Image

import qspos
from qspos.runtime.config import Config
from qspos.runtime.data import DEBIAN_FASHION_MNIST, MEAN_STD, load_splits, read_idx, split_indices
from qspos.stages.train import train_supernet

RESULTS = Path(__file__).parent / "results"


def write_folder(root: Path, cfg: Config) -> None:
    """The images ``cfg`` trains and validates on (its split of the IDX training file) as
    ``root/train``, and the whole test split as ``root/val``."""
    raw = DEBIAN_FASHION_MNIST
    x, y = read_idx(raw / "train-images-idx3-ubyte.gz"), read_idx(raw / "train-labels-idx1-ubyte.gz")
    tx, ty = read_idx(raw / "t10k-images-idx3-ubyte.gz"), read_idx(raw / "t10k-labels-idx1-ubyte.gz")
    train_idx, val_idx = split_indices(len(y), cfg.data.val_size, cfg.data.split_seed, cfg.data.train_subset)
    for split, (images, labels, idx) in {"train": (x, y, train_idx + val_idx), "val": (tx, ty, range(len(ty)))}.items():
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i]).save(root / split / f"class{int(labels[i])}" / f"{i:05d}.png")


def se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return math.sqrt(p * (1 - p) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if not DEBIAN_FASHION_MNIST.is_dir():
        sys.exit("needs Debian's dataset-fashion-mnist")
    t0 = time.perf_counter()
    rows = []
    idx_cfg = qspos.load_config("configs/quickstart.yaml", args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fashion"
        write_folder(folder, idx_cfg)
        mean, std = MEAN_STD["fashion_mnist"]
        folder_cfg = qspos.load_config(idx_cfg, ["data.dataset=imagefolder", f"data.root={folder}",
                                                 f"data.mean={list(mean)}", f"data.std={list(std)}",
                                                 "data.train_subset=null"])
        for name, cfg in (("idx", idx_cfg), ("imagefolder", folder_cfg)):
            splits = load_splits(cfg.data, cfg.model)
            t = time.perf_counter()
            res = train_supernet(cfg, Path(tmp) / name)
            n = len(splits.val)
            rows.append({"source": name, "val_top1_max": res.val_top1_max, "val_top1_min": res.val_top1_min,
                         "se_max": se(res.val_top1_max, n), "se_min": se(res.val_top1_min, n), "val_images": n,
                         "train_images": len(splits.train), "train_seconds": round(time.perf_counter() - t, 1)})
    out = {"command": " ".join(["python", *sys.argv]), "commit": git_commit(), "machine": machine(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "wall_seconds": round(time.perf_counter() - t0, 1), "config": "configs/quickstart.yaml", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "imagefolder.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Fashion-MNIST: IDX files against the same images as an ImageFolder tree", "",
             f"`{out['command']}` at commit `{out['commit']}`, {out['date']}; {out['machine']}; "
             f"wall {out['wall_seconds']} s.", "",
             "The supernet of configs/quickstart.yaml, trained with the same seed on the same pool of images "
             f"({rows[0]['train_images']} training and {rows[0]['val_images']} val images; the folder holds the IDX "
             "run's split and splits it again). Val top-1 after BN recalibration, ± binomial SE.", "",
             "| source | largest path | smallest path | train s |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['source']} | {100 * r['val_top1_max']:.2f} ± {100 * r['se_max']:.2f} "
                     f"| {100 * r['val_top1_min']:.2f} ± {100 * r['se_min']:.2f} | {r['train_seconds']} |")
    (RESULTS / "imagefolder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))



if __name__ == "__main__":
    main()
