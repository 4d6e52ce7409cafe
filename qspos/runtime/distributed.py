"""torchrun support: process group from the environment (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qspos.errors import QsposError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False  # a process group exists (every torchrun job has one, a single process too)

    @property
    def enabled(self) -> bool:
        """Use the collectives (DDP, gathers): under torchrun, even with one process, so that a
        one-GPU job runs the same NCCL path as a multi-GPU one."""
        return self.group

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment; a no-op outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group=True)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is the local rank's CUDA device when there is one, else the CPU; a device asked
    for by name must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise QsposError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise QsposError(f"device {name!r} is not available on this machine ({torch.cuda.device_count()} CUDA devices)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise QsposError(f"device {name!r} is not available on this machine")
    return device


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process (readable before any process group exists)."""
    return os.environ.get("RANK", "0") == "0"
