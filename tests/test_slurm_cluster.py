"""The local SLURM test cluster itself: arrays, dependencies, MPI in an allocation, scancel.

Real sbatch against the one-node cluster of the session (conftest's `slurm`, tests/slurmcluster.py);
one test starts a second beside it. When SLURM cannot be installed or started, these tests fail
with the reason: they are never skipped.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from slurmcluster import LocalSlurm

pytestmark = pytest.mark.slow  # real mpirun, SLURM or whole runs: `make check` leaves this file out


def wait_for_file(path: Path, timeout: float, slurm: LocalSlurm) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout:g} s\n{slurm.logs()}")
        time.sleep(0.1)


def finished(slurm: LocalSlurm, job_ids: list[int | str], timeout: float = 30.0) -> None:
    try:
        slurm.wait(job_ids, timeout)
    except TimeoutError as err:
        pytest.fail(f"{err}\n{slurm.logs()}")


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_array_tasks_see_their_id_and_count(slurm, tmp_path):
    job = slurm.sbatch(["--array=0-3", "-o", str(tmp_path / "out_%a"),
                        "--wrap", "echo $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT"], cwd=tmp_path)
    finished(slurm, [job])
    tasks = slurm.jobs(job)
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2", "3"]
    assert {t["JobState"] for t in tasks} == {"COMPLETED"}
    for i in range(4):
        assert (tmp_path / f"out_{i}").read_text().split() == [str(i), "4"]


def test_dependent_job_starts_after_the_array_ends(slurm, tmp_path):
    array = slurm.sbatch(["--array=0-1", "-o", "/dev/null",
                          "--wrap", f"sleep 1; date +%s.%N > {tmp_path}/end_$SLURM_ARRAY_TASK_ID"], cwd=tmp_path)
    after = slurm.sbatch([f"--dependency=afterany:{array}", "-o", "/dev/null",
                          "--wrap", f"date +%s.%N > {tmp_path}/start"], cwd=tmp_path)
    finished(slurm, [array, after])
    assert slurm.state(after) == "COMPLETED"
    start = float((tmp_path / "start").read_text())
    ends = [float((tmp_path / f"end_{i}").read_text()) for i in range(2)]
    assert start >= max(ends)


def test_mpirun_runs_two_ranks_in_an_allocation(slurm, tmp_path):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun is not on PATH: `make install` installs Open MPI")
    # One write per rank: mpirun forwards each rank's output as it reads it, and a
    # line printed in pieces by print(a, b) can interleave with the other rank's.
    program = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
               "os.write(1, f'rank {c.rank} of {c.size}\\n'.encode())")
    command = shlex.join([mpirun, "--allow-run-as-root", "--oversubscribe", "-n", "2",
                          sys.executable, "-c", program])
    out = tmp_path / "mpi.out"
    job = slurm.sbatch(["--ntasks=2", "-o", str(out), "--wrap", command], cwd=tmp_path)
    finished(slurm, [job], timeout=60)
    assert slurm.state(job) == "COMPLETED", out.read_text()
    assert sorted(out.read_text().splitlines()) == ["rank 0 of 2", "rank 1 of 2"]


def test_scancel_ends_a_running_job_as_cancelled(slurm, tmp_path):
    script = tmp_path / "sleep.sh"
    script.write_text(f"#!/bin/bash\nsleep 60 &\necho $! > {tmp_path}/sleep.pid\nwait\n")
    job = slurm.sbatch(["-o", "/dev/null", str(script)], cwd=tmp_path)
    wait_for_file(tmp_path / "sleep.pid", 20, slurm)
    sleep_pid = int((tmp_path / "sleep.pid").read_text())
    slurm.run(["scancel", str(job)])
    finished(slurm, [job], timeout=15)
    assert slurm.state(job) == "CANCELLED"
    assert process_gone(sleep_pid)


@pytest.mark.parametrize("flags", [[], ["--signal=TERM", "--full"]], ids=["scancel", "signal-TERM-full"])
def test_scancel_delivers_sigterm_to_the_batch_script(slurm, tmp_path, flags):
    script = tmp_path / "trap.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"trap 'echo TERM > {tmp_path}/marker; exit 143' TERM\n"
        f"touch {tmp_path}/started\n"
        "sleep 60 & wait\n"
    )
    job = slurm.sbatch(["-o", "/dev/null", str(script)], cwd=tmp_path)
    wait_for_file(tmp_path / "started", 20, slurm)
    slurm.run(["scancel", *flags, str(job)])
    finished(slurm, [job], timeout=15)
    assert (tmp_path / "marker").read_text().strip() == "TERM"
    # A signal is not a cancellation: the job ends by its own exit status.
    assert slurm.state(job) == ("CANCELLED" if not flags else "FAILED")


def test_a_second_cluster_runs_beside_and_stop_ends_its_jobs(slurm, tmp_path):
    with LocalSlurm(tmp_path) as other:
        assert other.conf != slurm.conf
        script = tmp_path / "sleep.sh"
        script.write_text(f"#!/bin/bash\nsleep 60 &\necho $! > {tmp_path}/sleep.pid\nwait\n")
        other.sbatch(["-o", "/dev/null", str(script)], cwd=tmp_path)
        wait_for_file(tmp_path / "sleep.pid", 20, other)
        daemons = other.pids
        assert set(daemons) == {"munged", "slurmctld", "slurmd"}
    assert all(process_gone(pid) for pid in daemons.values()), daemons
    assert process_gone(int((tmp_path / "sleep.pid").read_text()))
    # The first cluster did not notice.
    assert slurm.run(["sinfo", "-h", "-o", "%t"]).strip() == "idle"
