"""Where this process runs: devices, threads, MPI ranks and SLURM ids, read in one place.

Nothing else reads `os.environ` or `MPI.COMM_WORLD` (after submitit's
`JobEnvironment`); numerics receive plain values from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import torch

from losslandscape.errors import UserError


# Variables through which a scheduler or a user gives this process GPUs. A GPU given this
# way that torch cannot use is an error, never a silent fall-back to the CPU.
GPU_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")
NO_GPU = ("", "-1", "none", "nodevfiles")


def allocated_gpus(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, value) of the first variable that gives this process GPUs, or None."""
    e = os.environ if environ is None else environ
    for key in GPU_VARIABLES:
        value = e.get(key, "").strip()
        if value.lower() in NO_GPU or (key == "SLURM_GPUS_ON_NODE" and value == "0"):
            continue
        return key, value
    return None


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
                environ: Mapping[str, str] | None = None) -> torch.device:
    """The device one evaluating process uses (see `device_for`), checked usable, with
    `torch.cuda.set_device` called. `auto` on a process that sees no GPU although the
    allocation (SLURM, CUDA_VISIBLE_DEVICES) gave it some is an error, not the CPU.
    """
    gpus = 0 if requested == "cpu" else _cuda_count()
    if requested == "auto" and gpus == 0:
        given = allocated_gpus(environ)
        if given is not None:
            raise UserError(f"evaluation.device: this process was given GPUs ({given[0]}={given[1]}) but cannot "
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
    """Torch CPU threads: `requested`, or an equal share of the cores (at least 1)."""
    n = requested or max(1, cpu_cores() // max(1, processes_on_node))
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class MPIEnvironment:
    """This process's place in an MPI job. `comm` is None when there is no MPI job."""

    comm: Any
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes on this node (shared-memory split)
    local_size: int = 1
    parallel_hdf5: bool = False  # h5py can open files with the mpio driver (and we may use it)

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    coordinator_on_node: bool = False  # rank 0 runs on this node
    node: str = ""  # this node's name (MPI_Get_processor_name)

    @property
    def worker_index(self) -> int:
        """This worker's place among the evaluating processes of its node (0, 1, ...)."""
        return self.local_rank - (1 if self.coordinator_on_node else 0)

    @property
    def workers_on_node(self) -> int:
        """Evaluating processes on this node: the coordinator (rank 0) evaluates nothing."""
        return max(1, self.local_size - (1 if self.coordinator_on_node else 0))


def mpi_environment(comm=None) -> MPIEnvironment:
    """Rank, size and node-local rank from `comm` (default: COMM_WORLD), read once per job (by
    driver.run_job, which passes the result down).

    The node-local rank comes from an MPI shared-memory split, so it is right
    under any launcher (mpirun, srun, mpiexec.hydra), not only one that exports it.
    Set LOSSLANDSCAPE_SERIAL_HDF5=1 to make workers send results to rank 0
    even where h5py has MPI (the path used where it has not).
    """
    import h5py

    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    if comm.size == 1:
        return MPIEnvironment(None)
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        has_rank0 = node.allreduce(comm.rank == 0, op=MPI.LOR)
        local_rank, local_size = node.rank, node.size
    finally:
        node.Free()
    parallel = bool(h5py.get_config().mpi) and os.environ.get("LOSSLANDSCAPE_SERIAL_HDF5", "") not in ("1", "true")
    return MPIEnvironment(comm, comm.rank, comm.size, local_rank, local_size, parallel, has_rank0,
                          MPI.Get_processor_name())


@dataclass(frozen=True)
class SlurmEnvironment:
    """The SLURM variables a task needs, typed (after submitit's JobEnvironment)."""

    job_id: str | None
    array_job_id: str | None
    array_task_id: int | None
    array_task_count: int | None
    ntasks: int | None
    gpus_on_node: str | None

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> "SlurmEnvironment":
        e = os.environ if environ is None else environ
        as_int = lambda k: int(e[k]) if e.get(k, "").strip().isdigit() else None  # noqa: E731
        return cls(e.get("SLURM_JOB_ID"), e.get("SLURM_ARRAY_JOB_ID"), as_int("SLURM_ARRAY_TASK_ID"),
                   as_int("SLURM_ARRAY_TASK_COUNT"), as_int("SLURM_NTASKS"),
                   e.get("SLURM_GPUS_ON_NODE") or e.get("CUDA_VISIBLE_DEVICES"))
