"""Your float model and your datasets in, a searched, fine-tuned, ONNX-exported mixed-precision
net out: torchvision's MobileNetV2 on Fashion-MNIST read with your own code and transforms.

    python examples/own_model_pipeline.py [--out runs/own_model] [--tiny]

``--tiny`` (what the tests run) takes a few hundred images and a few steps of each stage.
"""

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import TensorDataset

import qspos

ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def fashion_mnist(split: str, n: int | None) -> TensorDataset:
    """Your data, your transforms: here the IDX files, scaled to [-1, 1]."""
    images = np.frombuffer(gzip.open(ROOT / f"{split}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(ROOT / f"{split}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    x = torch.from_numpy(images.copy()).view(-1, 1, 28, 28)[:n].float() / 127.5 - 1
    return TensorDataset(x, torch.from_numpy(labels.copy()).long()[:n])


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/own_model")
parser.add_argument("--tiny", action="store_true")
args = parser.parse_args()
n = 256 if args.tiny else None
train, test = fashion_mnist("train", n), fashion_mnist("t10k", n)
val_size = 64 if args.tiny else 5000
train, val = torch.utils.data.random_split(train, [len(train) - val_size, val_size], torch.Generator().manual_seed(0))

model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
model.features[0][0] = torch.nn.Conv2d(1, 16, 3, 2, 1, bias=False)  # grey images in
config = {
    "name": "own_model",
    "space": {"weight_bits": [2, 4, 8], "act_bits": [4, 8], "width_multipliers": [0.5, 1.0]},
    "data": {"batch_size": 64 if args.tiny else 256},
    "train": {"epochs": 5, "lr": 0.2, "max_steps": 3 if args.tiny else None},
    "search": {"budgets": [{"name": "w4a4", "bitops": "uniform 4,4"}], "population": 4 if args.tiny else 16,
               "iterations": 1 if args.tiny else 6, "calib_images": 64 if args.tiny else 2048,
               "random_baseline": False},
    "finetune": {"epochs": 2, "max_steps": 2 if args.tiny else None},
    "export": {"formats": ["onnx-qcdq"]},
}
result = qspos.run(config, args.out, model=model, train=train, val=val, test=test)
for net in result.finetune:
    print(f"{net.name}: {net.bitops / 1e6:.1f} MBitOps, test top-1 {100 * net.test_top1:.2f}%, "
          f"ONNX in {Path(args.out) / 'export' / net.name / 'model_qcdq.onnx'}")
