"""Worker groups that share one model (evaluation.ranks_per_model = K): made from the MPI job.

The workers (ranks 1..N-1) form groups of K consecutive ranks; rank 0 stays the coordinator
of the whole job and hands each unit to a whole group (distributed.coordinate). Each group
becomes one torch.distributed process group (gloo on the CPU, NCCL on GPUs): its first rank
opens a TCPStore on a free port of its node and sends the address to the others over MPI, so
no second launcher (torchrun) and no fixed port is needed. The group's model is then sharded
over it (numerics/shard.py).
"""

from __future__ import annotations

import datetime
import logging
import socket

from losslandscape.errors import UserError

log = logging.getLogger(__name__)

RENDEZVOUS_SECONDS = 120.0  # how long a group's ranks wait for each other to join


def check_size(size: int, k: int) -> None:
    """One line where the job's workers do not divide into groups of `k`."""
    workers = size - 1
    if k > 1 and (workers < k or workers % k):
        raise UserError(f"evaluation.ranks_per_model: {k} does not divide the job's {workers} worker rank(s) "
                        f"({size} ranks less the coordinator); expected 1 + a multiple of {k} ranks, e.g. "
                        f"mpirun -n {1 + k * max(1, workers // k)}")


def members(size: int, k: int) -> list[list[int]]:
    """The world ranks of each group: consecutive worker ranks, k at a time."""
    return [list(range(first, first + k)) for first in range(1, size, k)]


def split(comm, k: int):
    """The MPI communicator of this rank's group (collective over `comm`); None on rank 0."""
    from mpi4py import MPI

    color = MPI.UNDEFINED if comm.rank == 0 else (comm.rank - 1) // k
    group = comm.Split(color, key=comm.rank)
    return None if group == MPI.COMM_NULL else group


def join(group, device) -> None:
    """This rank joins its group's torch.distributed process group (collective over `group`)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=RENDEZVOUS_SECONDS)
    if group.rank == 0:
        host = _address()
        store = dist.TCPStore(host, 0, group.size, True, timeout=timeout, wait_for_workers=False)
        address = group.bcast((host, store.port), root=0)
    else:
        host, port = group.bcast(None, root=0)
        store = dist.TCPStore(host, port, group.size, False, timeout=timeout)
        address = (host, port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=group.rank, world_size=group.size, timeout=timeout,
                            **({"device_id": device} if device.type == "cuda" else {}))
    log.debug("joined a %s group of %d ranks at %s:%d", backend, group.size, *address)


def _address() -> str:
    """An address of this node that the group's other nodes can reach."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name


def shard(evaluator, group, world_rank: int) -> None:
    """Join the group's process group and shard `evaluator`'s model over it; log what this rank holds."""
    from losslandscape.numerics.shard import Share

    from losslandscape.numerics.devices import release_freed_memory

    join(group, evaluator.device)
    shared = evaluator.shard(Share(group.rank, group.size, evaluator.device))
    release_freed_memory()  # what was read to fill the shards and probe them
    if shared is None:  # another rank of the group raised: its line is the job's (distributed.agree)
        return
    held, total = shared
    log.info("rank %d: holds %d of the model's %d parameter values (%.1f%%), sharded over %d ranks "
             "(evaluation.ranks_per_model)", world_rank, held, total, 100.0 * held / max(total, 1), group.size)


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
