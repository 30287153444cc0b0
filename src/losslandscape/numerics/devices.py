"""Which device and how many CPU threads one evaluating process uses.

Pure choices from plain values: the spec's `evaluation.device` and `evaluation.threads`, the
process's place among its node's workers, and the GPUs the scheduler gave it. What the
scheduler gave is read from the environment by `run/environment.allocated_gpus` and passed
in: nothing here reads `os.environ` or knows of MPI.
"""

from __future__ import annotations

import os

import torch

from losslandscape.errors import UserError


def _cuda_count() -> int:
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver raises here; counted as no usable GPU
        return 0


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; the README's GPU section says how to install a CUDA build"
    try:
        torch.cuda.init()
    except Exception as exc:
        return f"CUDA does not initialise: {' '.join(str(exc).split())[:200]}"
    return "torch.cuda.is_available() is False"


def device_for(requested: str, worker_index: int, gpus: int) -> str:
    """Which device a worker takes (pure): `requested` from the spec, the worker's place among
    the node's workers, the GPUs this process sees. Raises UserError where no GPU can serve."""
    if requested == "cpu" or (requested == "auto" and gpus == 0):
        return "cpu"
    if gpus == 0:
        raise UserError(f"evaluation.device: {requested!r} asked for, but this process has no usable CUDA GPU")
    if requested in ("auto", "cuda"):
        return f"cuda:{worker_index % gpus}"
    index = torch.device(requested).index
    if index is not None and index >= gpus:
        raise UserError(f"evaluation.device: {requested!r} asked for, but this process sees {gpus} GPU(s) "
                        f"(cuda:0..cuda:{gpus - 1})")
    return requested


def pick_device(requested: str = "auto", worker_index: int = 0,
                allocated: tuple[str, str] | None = None) -> torch.device:
    """The device one evaluating process uses (see `device_for`), checked usable, with
    `torch.cuda.set_device` called. `allocated`: the (variable, value) through which the
    scheduler or the user gave this process GPUs (`environment.allocated_gpus()`), or None;
    `auto` on a process that sees no GPU although it was given some is an error, not the CPU.
    """
    gpus = 0 if requested == "cpu" else _cuda_count()
    if requested == "auto" and gpus == 0 and allocated is not None:
        raise UserError(f"evaluation.device: this process was given GPUs ({allocated[0]}={allocated[1]}) but cannot "
                        f"use them: {_why_no_cuda()}; set evaluation.device = \"cpu\" to run on CPUs on purpose")
    try:
        device = torch.device(device_for(requested, worker_index, gpus))
    except UserError as exc:
        raise UserError(f"{exc} ({_why_no_cuda()})" if gpus == 0 else str(exc)) from None
    if device.type == "cuda":
        try:
            torch.cuda.set_device(device)
            torch.zeros(1, device=device).add_(1).item()
        except Exception as exc:
            raise UserError(f"evaluation.device: {device} is not usable "
                            f"({' '.join(str(exc).split())[:200]})") from None
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask: what SLURM or taskset gave us)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(requested: int, processes_on_node: int = 1) -> int:
    """Torch CPU threads: `requested`; else OMP_NUM_THREADS where it is set (the cluster's or
    the user's choice, which torch itself follows); else an equal share of the cores (at least 1)."""
    n = requested or omp_threads() or max(1, cpu_cores() // max(1, processes_on_node))
    torch.set_num_threads(n)
    return n


def omp_threads() -> int:
    """OMP_NUM_THREADS as a count (its first level where it lists several); 0 where it is unset or
    not a positive integer (OpenMP ignores such a value too)."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else 0


def release_freed_memory() -> None:
    """Give the host memory this process has freed back to the system (glibc's malloc_trim):
    glibc raises its mmap threshold as large blocks are freed, and keeps the freed blocks below
    it, so after reading a model's tensors one by one the process stays that much larger than
    what it holds. Nothing elsewhere (another C library: nothing is done)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
