"""Where this process runs: devices, threads, MPI ranks and SLURM ids, read in one place.

Nothing else reads `os.environ` or `MPI.COMM_WORLD` (after submitit's
`JobEnvironment`); numerics receive plain values from here.
"""

from __future__ import annotations

import os

import torch

from .errors import UserError


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: cuda:<local_rank % GPUs on this node> when there are GPUs, else the CPU."""
    if requested == "auto":
        n = torch.cuda.device_count()
        return torch.device(f"cuda:{local_rank % n}") if n else torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"evaluation.device: {requested!r} asked for, but this machine has no CUDA GPU")
        if requested == "cuda":
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return torch.device(requested)


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask: what SLURM or taskset gave us)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(requested: int, processes_on_node: int = 1) -> int:
    """Torch CPU threads: `requested`, or an equal share of the cores (at least 1)."""
    n = requested or max(1, cpu_cores() // max(1, processes_on_node))
    torch.set_num_threads(n)
    return n
