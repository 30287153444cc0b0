"""Where this process runs: the GPUs it was given and its MPI ranks, read in one place
(SLURM's own variables and queue: `losslandscape.cluster`).

Nothing else reads `MPI.COMM_WORLD`, nor the GPU variables of `os.environ` (after submitit's
`JobEnvironment`); numerics receive plain values from here (numerics/devices.py picks the
device from `allocated_gpus()`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from losslandscape.surfacefile.format import parallel_hdf5


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
    parallel = parallel_hdf5() and os.environ.get("LOSSLANDSCAPE_SERIAL_HDF5", "") not in ("1", "true")
    return MPIEnvironment(comm, comm.rank, comm.size, local_rank, local_size, parallel, has_rank0,
                          MPI.Get_processor_name())
