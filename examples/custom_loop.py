"""Your own training loop over a qspos supernet: calibrate it, sample a path, train it, price it,
search it with your own score under a BitOps budget, and take out the standalone Brevitas net.

    python examples/custom_loop.py [--steps 300] [--tiny]
"""

import argparse
import random

import torch
from torch import nn

import qspos

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--tiny", action="store_true", help="a few steps and a tiny search (the tests)")
args = parser.parse_args()
torch.manual_seed(0)
x = torch.randn(512, 3, 16, 16)  # stand-ins for your images and labels: a learnable rule
y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()

model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                      nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
space = {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]}
# the model's weights are the supernet's start; calib: a few training batches to set the activation
# thresholds from (as qspos train does; left out, every threshold starts at 1.0 and costs accuracy)
calib = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
sn = qspos.Supernet.from_model(model, space, input_shape=(3, 16, 16), calib=calib)


def score(arch: qspos.Arch) -> float:
    """Your metric on held-out data, after BatchNorm recalibration of the path."""
    sn.set_arch(arch)
    qspos.recalibrate_bn(sn, [(x[:256], None)], "cpu")
    sn.eval()
    with torch.no_grad():
        acc = (sn(x[256:]).argmax(1) == y[256:]).float().mean().item()
    sn.train()
    return acc


print(f"before training: largest path {100 * score(sn.space.extremes()[1]):.1f}%")  # the start, measured
opt = torch.optim.SGD(sn.parameters(), lr=0.05)  # no momentum: a path's update leaves the others alone
rng = random.Random(0)
for _ in range(3 if args.tiny else args.steps):
    sn.set_arch(sn.space.sample(rng))  # uniform single-path sampling (SPOS)
    batch = torch.randint(0, len(x), (64,))
    loss = nn.functional.cross_entropy(sn(x[batch]), y[batch])
    opt.zero_grad()
    loss.backward()
    opt.step()


settings = {"population": 4, "iterations": 1, "topk": 2, "mutation_count": 2, "crossover_count": 2} if args.tiny \
    else {"population": 16, "iterations": 5, "topk": 4, "mutation_count": 8, "crossover_count": 8}
best, acc = qspos.evolve(sn, score, {"bitops": "uniform 3,3"}, **settings)[0]
print(f"best arch {best.to_dict()}: held-out top-1 {100 * acc:.1f}%, {sn.cost(best).bitops / 1e6:.2f} MBitOps")
net = sn.extract(best)  # a plain Brevitas nn.Module: more QAT, your own export
print(type(net).__name__, sum(p.numel() for p in net.parameters()), "parameters")
