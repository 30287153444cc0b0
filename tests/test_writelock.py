"""One writer per surface file (writelock.py), with real processes: a second `surface` or a
`merge` started while a job writes the file is refused with one line naming the first (host,
pid, SLURM job); a `surface` run is refused while an array task writes one of its shards; a job
killed with SIGKILL leaves its lock, which the next run takes over and finishes the surface.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from losslandscape.errors import UserError

from helpers import BIN, assert_values, done_count, in_process, one_error_line, tiny_job, tiny_values

# the linear model of test_diskfaults, slowed down: a run lasts long enough to be interrupted
SLOW = '''
import os
import time
import torch
from torch import nn


class Slow(nn.Sequential):
    def forward(self, x):
        time.sleep(float(os.environ.get("WL_SLEEP", "0")))
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return Slow(nn.Flatten(), nn.Linear(64, 10))
'''
ENV = {"OMP_NUM_THREADS": "1", **{k: "" for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")}}


def slow_job(folder: Path, surface: Path, x: str = "-1:1:41") -> Path:
    spec = tiny_job(folder, surface, x, unit=2, module="wlslow")
    (folder / "wlslow.py").write_text(SLOW)
    return spec


def ll(*args) -> list[str]:
    return [str(BIN / "losslandscape"), *map(str, args)]


def start(args: list[str], cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV, **env})


def run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **ENV, **env})


def wait_until(check, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"{what}: the job ended first ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_job_never_blocks_the_next(tmp_path):
    surf = tmp_path / "s.h5"
    lock = tmp_path / "s.h5.lock"
    spec = slow_job(tmp_path, surf)
    first = start(ll("surface", spec), tmp_path, WL_SLEEP="0.5")
    try:
        wait_until(lambda: surf.exists() and done_count(surf) > 0, first, "the first job computes points")
        held = json.loads(lock.read_text())
        assert (held["host"], held["pid"]) == (socket.gethostname(), first.pid)

        t0 = time.monotonic()
        line = one_error_line(run(ll("surface", spec), tmp_path))
        seconds = time.monotonic() - t0
        assert f"{surf} is being written by host {socket.gethostname()}, pid {first.pid}" in line, line
        merge_line = one_error_line(run(ll("merge", surf), tmp_path))
        assert f"pid {first.pid}" in merge_line, merge_line
        assert first.poll() is None, "the first job must keep running"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.exists(), "a SIGKILLed job cannot remove its lock"
    before = done_count(surf)
    proc = run(ll("surface", spec), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"took over the lock {lock} left by host {socket.gethostname()}, pid {first.pid}" in proc.stderr
    assert not lock.exists(), "a finished run removes its lock"
    assert 0 < before < 41
    assert_values(surf, tiny_values(surf))
    print(line, f"(refused after {seconds:.1f} s)")


@pytest.mark.slow
def test_a_surface_run_is_refused_while_an_array_task_writes_its_shard(tmp_path):
    """A real array task (`losslandscape task`, SLURM's variables set) holds its shard's lock;
    `surface` on the same surface is refused naming it; once it is gone, nothing blocks."""
    from losslandscape.surfacefile import write as surfaces

    surf = tmp_path / "s.h5"
    spec = slow_job(tmp_path, surf)
    in_process(spec, run=False)
    shards = tmp_path / "s.h5.shards"
    shards.mkdir()
    with h5py.File(surf, "r") as f:
        spec_json = f.attrs["spec"]
    surfaces.create_shard(shards / "task_0.h5", surf, np.arange(41), 0, 1, spec_json, [str(tmp_path)])
    task = start(ll("task", shards, "--task", "0"), tmp_path, WL_SLEEP="0.5", SLURM_JOB_ID="4243", SLURM_ARRAY_JOB_ID="4242",
                 SLURM_ARRAY_TASK_ID="0")
    try:
        wait_until(lambda: done_count(shards / "task_0.h5") > 0, task, "the task computes points")
        line = one_error_line(run(ll("surface", spec), tmp_path))
        assert "array task at work on its shard task_0.h5" in line and f"pid {task.pid}, SLURM job 4242_0" in line, line
    finally:
        task.send_signal(signal.SIGKILL)
        task.wait()
    # the task's lock is stale now: the surface run starts (stopped at once by SIGTERM: resumable)
    proc = start(ll("surface", spec), tmp_path, WL_SLEEP="0.5")
    wait_until(lambda: done_count(surf) > 0, proc, "the surface run starts after the task was killed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3, proc.communicate()[1][-2000:]
    print(line)


def test_stale_rules_without_record_locks():
    """Where the file system has no record locks: a holder on this host is alive only while its
    pid runs with the recorded start time; on another host only its SLURM job can tell."""
    from losslandscape.surfacefile import lock as writelock

    me = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = {"host": me, "pid": os.getpid(), "pid_start": writelock._start_time(os.getpid())}
    assert writelock._alive(mine, None) is True
    assert writelock._alive({**mine, "pid_start": "1"}, None) is False  # the pid was reused
    assert writelock._alive({"host": me, "pid": dead.pid, "pid_start": "1"}, None) is False
    assert writelock._alive({"host": "elsewhere", "pid": 1}, None) is None  # cannot tell: refused, not taken
    assert writelock._alive({"host": "elsewhere", "pid": 1}, True) is False  # its record lock is free


def test_a_lock_from_another_host_that_cannot_be_judged_is_refused(tmp_path):
    """The rule above, end to end: a lock file whose record lock is held (by a live process here)
    and that names another host is refused naming it; without a holder it is taken over."""
    from losslandscape.surfacefile import lock as writelock

    target = tmp_path / "s.h5"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, json, os, sys, time
fd = os.open({str(writelock.lock_path(target))!r}, os.O_CREAT | os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({{"host": "node17", "pid": 4321, "slurm_job": "777", "started": "then"}}).encode())
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as err:
            writelock.acquire(target, "test")
        assert "is being written by host node17, pid 4321, SLURM job 777" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    writelock.acquire(target, "test")  # the holder is gone: its record lock with it
    try:
        assert json.loads(writelock.lock_path(target).read_text())["pid"] == os.getpid()
    finally:
        writelock.release(target)
    assert not writelock.lock_path(target).exists()


@pytest.mark.slow
def test_the_hessian_maps_spectrum_and_submit_are_refused_while_another_process_writes(tmp_path):
    """The other writers of a surface file take its lock too: `hessian` (the maps and --centre)
    and `submit` are refused with one line naming the process that holds it."""
    surf = tmp_path / "s.h5"
    spec = tiny_job(tmp_path, surf, "-1:1:3", "-1:1:3", unit=2)
    assert in_process(spec) == 0
    holder = start([sys.executable, "-c", "import sys, time\nfrom losslandscape.surfacefile import lock as writelock\n"
                    f"writelock.acquire({str(surf)!r}, 'holding it for a test')\nprint('held', flush=True)\n"
                    "time.sleep(120)"], tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (("hessian", surf, "--samples", "8"), ("hessian", surf, "--centre", "--samples", "8"),
                     ("submit", spec, "--tasks", "2", "--data.splits=train,test")):
            line = one_error_line(run(ll(*args), tmp_path))
            assert f"{surf} is being written by host {socket.gethostname()}, pid {holder.pid}" in line, (args, line)
    finally:
        holder.kill()
        holder.wait()
