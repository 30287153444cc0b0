"""`submit` for real: array tasks x MPI ranks on a one-node SLURM cluster started here.

The cluster (munged, slurmctld, slurmd) is started by the test and stopped by
pid at the end; when it cannot be started the tests fail with the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from losslandscape import spec as specs
from losslandscape.frontends import cli
from losslandscape.run.driver import run_serial
from losslandscape.run.work import SurfaceWork

from helpers import FLAKY_CLEAN, flaky_job, write_job
from slurmcluster import LocalSlurm

pytestmark = pytest.mark.slow  # real mpirun, SLURM or whole runs: `make check` leaves this file out

VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")


def write_spec(path: Path, ckpt: Path, surface: Path, x: str, y: str, samples: int, unit: int) -> Path:
    return write_job(path, ckpt, surface, x, y, samples, unit, threads=1)


def reference(toml: Path, out: Path) -> dict[str, np.ndarray]:
    spec = specs.load(toml, {"output.surface": str(out)})
    assert run_serial(SurfaceWork(spec)) == 0
    with h5py.File(out, "r") as f:
        return {k: f[k][...] for k in VALUES}


def submit(slurm: LocalSlurm, toml: Path, cwd: Path, *extra: str) -> tuple[str, str, str]:
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(toml), *extra],
                          capture_output=True, text=True, env=slurm.env, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr + slurm.logs()
    m = re.search(r"array job (\d+) \((\d+) tasks\), merge job (\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return m.group(1), m.group(3), proc.stderr


def assert_equal_surface(path: Path, ref: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "r") as f:
        assert f["train_done"][...].all() and f["test_done"][...].all()
        for k in VALUES:
            np.testing.assert_allclose(f[k][...], ref[k], rtol=1e-6)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for_points(shard: Path, at_least: int, timeout: float = 120) -> tuple[int, int]:
    """Poll a shard a running task writes until it has `at_least` points: (done, assigned)."""
    deadline = time.monotonic() + timeout
    while True:
        with h5py.File(shard, "r", locking=False) as f:
            done, assigned = int(f["test_done"][...].sum()), len(f["points"])
        if done >= at_least or time.monotonic() > deadline:
            return done, assigned
        time.sleep(0.1)


def task_logs(shards: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(shards.glob("*.log")))


def test_array_of_3_tasks_x_2_ranks_equals_one_process(slurm, trained, tmp_path):
    surf = tmp_path / "surf.h5"
    toml = write_spec(tmp_path / "job.toml", trained["final"], surf, "-1:1:5", "-1:1:4", 100, 2)
    ref = reference(toml, tmp_path / "ref.h5")
    array, merge_job, _ = submit(slurm, toml, tmp_path, "--tasks", "3", "--ranks-per-task", "2")
    shards = tmp_path / "surf.h5.shards"
    assert sorted(p.name for p in shards.glob("task_*.h5")) == ["task_0.h5", "task_1.h5", "task_2.h5"]
    slurm.wait([array, merge_job], timeout=300)
    states = [r["JobState"] for r in slurm.jobs(array)]
    assert states == ["COMPLETED"] * 3, task_logs(shards)
    assert slurm.state(merge_job) == "COMPLETED", task_logs(shards)
    logs = task_logs(shards)
    assert "1 workers; workers write through parallel HDF5" in logs  # each task is a 2-rank MPI job
    assert_equal_surface(surf, ref)
    before = sha(surf)
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "merge", str(surf)], capture_output=True,
                          text=True, env=slurm.env, timeout=60)  # on the cluster: squeue answers
    assert proc.returncode == 0 and sha(surf) == before  # a second merge changes nothing
    status = subprocess.run([sys.executable, "-m", "losslandscape", "status", str(surf), "--json"],
                            capture_output=True, text=True, env=slurm.env, timeout=60)
    report = json.loads(status.stdout)
    assert report["remaining"] == 0 and report["splits"]["test"]["pending"] == 0


def test_srun_launcher_runs_a_task_over_its_ranks(slurm, trained, tmp_path):
    surf = tmp_path / "surf.h5"
    toml = write_spec(tmp_path / "job.toml", trained["final"], surf, "-1:1:4", "-1:1:3", 60, 1)
    ref = reference(toml, tmp_path / "ref.h5")
    # 2 ranks: the test node has 2 CPUs, and one job cannot have more tasks than the node has CPUs
    array, merge_job, _ = submit(slurm, toml, tmp_path, "--tasks", "1", "--ranks-per-task", "2",
                                 "--launcher", "srun")
    slurm.wait([array, merge_job], timeout=180)
    shards = tmp_path / "surf.h5.shards"
    assert "srun --mpi=pmix" in (shards / "array.sbatch").read_text()
    assert slurm.state(merge_job) == "COMPLETED", task_logs(shards)
    assert "1 workers; workers write through parallel HDF5" in task_logs(shards)
    assert_equal_surface(surf, ref)


def test_cancelled_task_then_merge_and_resubmit_recomputes_only_missing(slurm, trained, tmp_path, monkeypatch,
                                                                        capsys):
    surf = tmp_path / "surf.h5"
    # 400 images a point: a task must still be at work after the seconds the early merge takes
    toml = write_spec(tmp_path / "job.toml", trained["final"], surf, "-1:1:13", "-1:1:13", 400, 1)
    ref = reference(toml, tmp_path / "ref.h5")
    array, merge_job, _ = submit(slurm, toml, tmp_path, "--tasks", "3", "--ranks-per-task", "2")
    shards = tmp_path / "surf.h5.shards"
    before = sha(surf)
    early = subprocess.run([sys.executable, "-m", "losslandscape", "merge", str(surf)], capture_output=True,
                           text=True, env=slurm.env, timeout=60)
    assert early.returncode == 1 and sha(surf) == before, early.stderr
    assert f"merge: array job {array} of {surf} is still queued or running" in early.stderr
    # `status` of the live array runs in this process (a new process takes seconds to start, in which
    # a task does dozens of points), and the cancel follows it at once
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    done, assigned = wait_for_points(shards / "task_1.h5", 2)
    capsys.readouterr()
    assert cli.main(["status", str(surf), "--json"]) == 0
    slurm.run(["scancel", f"{array}_1"])
    live = json.loads(capsys.readouterr().out)
    assert 2 <= done < assigned, f"task 1 did {done} of {assigned} points before it could be cancelled"
    assert 1 <= live["running_tasks"] <= 3 and live["parallel_workers"] == live["running_tasks"], live
    slurm.wait([array, merge_job], timeout=300)
    records = {r["ArrayTaskId"]: r for r in slurm.jobs(array)}
    assert records["1"]["JobState"] == "CANCELLED"
    merge_record = slurm.jobs(merge_job)[0]
    assert merge_record["ExitCode"].startswith("4:"), merge_record  # the merge job reports missing points
    with h5py.File(surf, "r") as f:
        complete = f["train_done"][...] & f["test_done"][...]
    missing = int((complete == 0).sum())
    assert 0 < missing < 169
    ended = subprocess.run([sys.executable, "-m", "losslandscape", "status", str(surf)], capture_output=True,
                           text=True, env=slurm.env, timeout=60).stdout
    assert f"{missing} points left; no array task is running now" in ended, ended
    # resubmit: only the missing points are shared out
    array2, merge2, _ = submit(slurm, toml, tmp_path, "--tasks", "2", "--ranks-per-task", "2")
    record = json.loads((shards / "submission.json").read_text())
    assert record["points"] == missing and sum(record["points_per_task"]) == missing
    slurm.wait([array2, merge2], timeout=300)
    assert slurm.state(merge2) == "COMPLETED", task_logs(shards)
    assert_equal_surface(surf, ref)
    before = sha(surf)
    subprocess.run([sys.executable, "-m", "losslandscape", "merge", str(surf)], check=True, capture_output=True,
                   env=slurm.env)  # on the cluster: squeue answers
    assert sha(surf) == before


def test_dry_run_submits_nothing(slurm, trained, tmp_path):
    toml = write_spec(tmp_path / "job.toml", trained["final"], tmp_path / "s.h5", "-1:1:3", "", 50, 1)
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(toml), "--tasks", "2",
                           "--dry-run"], capture_output=True, text=True, env=slurm.env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=0-1" in proc.stdout and "#SBATCH --dependency=afterany:ARRAY_JOB_ID" in proc.stdout
    assert not (tmp_path / "s.h5").exists()
    assert slurm.run(["squeue", "-h"]).strip() == ""


def test_requeued_task_resumes_its_shard(slurm, trained, tmp_path):
    """A preempted task (`scontrol requeue`, as preemption with --requeue does) reruns and resumes."""
    surf = tmp_path / "surf.h5"
    toml = write_spec(tmp_path / "job.toml", trained["final"], surf, "-1:1:9", "-1:1:9", 60, 1)
    ref = reference(toml, tmp_path / "ref.h5")
    array, merge_job, _ = submit(slurm, toml, tmp_path, "--tasks", "2", "--ranks-per-task", "2")
    shards = tmp_path / "surf.h5.shards"
    done, assigned = wait_for_points(shards / "task_0.h5", 2)
    assert 2 <= done < assigned
    slurm.run(["scontrol", "requeue", f"{array}_0"])
    # Slurm holds a requeued job until a BeginTime 2 minutes on, set once it is pending again; a user
    # may release it at once (scontrol update StartTime), as here, so the test does not sit out the hold
    deadline = time.monotonic() + 60
    while slurm.state(f"{array}_0") != "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)
    slurm.run(["scontrol", "update", f"JobId={array}_0", "StartTime=now"])
    slurm.wait([array, merge_job], timeout=300)
    log = (shards / "task_0.log").read_text()
    assert log.count("task 0 of 2") == 2, log  # it ran twice
    resumed = re.findall(r"shard \S+task_0.h5: (\d+) of (\d+) points done", log)
    assert len(resumed) == 2 and int(resumed[1][0]) >= 2, log  # the second run started from the first's points
    assert slurm.state(merge_job) == "COMPLETED", task_logs(shards)
    assert_equal_surface(surf, ref)


def test_tasks_run_the_overrides_given_to_submit(slurm, trained, tmp_path):
    """A surface made with train only; `submit --data.splits=train,test --evaluation.batch_size=32`:
    the tasks compute the test split with batches of 32, and status and merge report both splits."""
    surf = tmp_path / "surf.h5"
    toml = write_job(tmp_path / "job.toml", trained["final"], surf, "-1:1:5", "-1:1:4", 100, 2,
                     splits=("train",), threads=1)
    assert run_serial(SurfaceWork(specs.load(toml))) == 0
    spec = specs.load(toml, {"output.surface": str(tmp_path / "ref.h5"), "data.splits": "train,test"})
    assert run_serial(SurfaceWork(spec)) == 0
    with h5py.File(tmp_path / "ref.h5", "r") as f:
        ref = {k: f[k][...] for k in VALUES}
    before = sha(surf)
    refused = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(toml), "--tasks", "2",
                              "--grid.x=-1:1:7"], capture_output=True, text=True, env=slurm.env, cwd=tmp_path,
                             timeout=120)
    assert refused.returncode == 1 and sha(surf) == before, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("losslandscape: error: grid.x: the surface file")
    array, merge_job, _ = submit(slurm, toml, tmp_path, "--tasks", "2", "--ranks-per-task", "2",
                                 "--data.splits=train,test", "--evaluation.batch_size=32")
    shards = tmp_path / "surf.h5.shards"
    slurm.wait([array, merge_job], timeout=300)
    assert slurm.state(merge_job) == "COMPLETED", task_logs(shards)
    logs = task_logs(shards)
    assert logs.count("batch 32, fp32") == 2, logs  # the one worker of each task
    assert re.search(r"shard \S+task_0.h5: 0 of 10 points done", logs), logs  # the test split of every point
    assert_equal_surface(surf, ref)
    report = json.loads(subprocess.run([sys.executable, "-m", "losslandscape", "status", str(surf), "--json"],
                                       capture_output=True, text=True, env=slurm.env, timeout=60).stdout)
    assert set(report["splits"]) == {"train", "test"} and report["splits"]["test"]["done"] == 20


def test_an_array_task_finds_the_model_factory_beside_the_spec(slurm, tmp_path):
    surf = tmp_path / "s.h5"
    spec = flaky_job(tmp_path / "project", surf, grid="-1:1:3")
    (tmp_path / "elsewhere").mkdir()
    env = {**slurm.env, **FLAKY_CLEAN, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(spec), "--tasks", "1",
                           "--ranks-per-task", "2"], capture_output=True, text=True, env=env,
                          cwd=tmp_path / "elsewhere", timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"array job (\d+) \((\d+) tasks\), merge job (\d+)", proc.stdout)
    slurm.wait([m.group(1), m.group(3)], timeout=180)
    assert slurm.state(m.group(3)) == "COMPLETED", task_logs(tmp_path / "s.h5.shards")
    with h5py.File(surf, "r") as f:
        assert f["train_done"][...].all()
