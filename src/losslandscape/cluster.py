"""What the cluster says about this process and its jobs: SLURM's variables, read here into a
typed record, and its queue (squeue). It sits below the run and the surface file: the write
lock names its holder's SLURM job and asks the queue whether a holder's job still runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from losslandscape.errors import UserError


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


# every state of a job that may still start or still be writing (COMPLETING included)
BUSY_STATES = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,REQUEUE_HOLD,RESIZING,SIGNALING,STOPPED"


class SqueueFailed(UserError):
    """squeue ran and failed (the controller down, a timeout): whether jobs still run is unknown."""


def queued(job_ids: list[str]) -> list[str]:
    """Those of job_ids that SLURM still has pending or running (array tasks included); none
    where squeue is not installed (not on a cluster). Raises SqueueFailed when squeue fails for
    another reason than job ids it no longer knows (long finished)."""
    exe = shutil.which("squeue")
    if exe is None or not job_ids:
        return []
    # %F: the array's base job id (a plain job's own id), so array tasks count for their array
    proc = subprocess.run([exe, "-h", "-o", "%F", "-t", BUSY_STATES, "-j", ",".join(job_ids)],
                          capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # unknown (long finished) job ids
            return []
        said = " ".join(proc.stderr.split())[-200:]
        raise SqueueFailed(f"squeue failed with exit {proc.returncode}" + (f": {said}" if said else ""))
    return sorted(set(proc.stdout.split()) & set(job_ids))


def running_tasks(array_job: str) -> int | None:
    """Array tasks of `array_job` that are running now (None when squeue cannot say)."""
    exe = shutil.which("squeue")
    if exe is None:
        return None
    proc = subprocess.run([exe, "-h", "-r", "-t", "RUNNING", "-o", "%i", "-j", array_job], capture_output=True,
                          text=True, errors="replace")
    if proc.returncode != 0:
        return 0 if "Invalid job id" in proc.stderr else None
    return len(proc.stdout.split())
