"""No hang, no silent CPU, nothing in the way: failures of real `mpirun` jobs and first runs.

Each test starts real processes (Open MPI's mpirun with 3 ranks, or one process) and a
user's own model factory that fails on purpose on one rank, as a CUDA out-of-memory error
or a broken node would. Every failure must end the whole job within 30 s with exit 1 and
one `losslandscape: error:` line naming the rank, and a later clean run must finish the
surface with the values of an undisturbed run.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import BIN, FLAKY_CLEAN, flaky_job, mpirun

pytestmark = pytest.mark.slow  # real mpirun, SLURM or whole runs: `make check` leaves this file out

def surface_cmd(spec: Path, *extra: str) -> list[str]:
    # the installed console script: unlike `python -m`, it puts no folder of the user's on sys.path
    return [str(BIN / "losslandscape"), "surface", str(spec), *extra]


def timed(cmd: list[str], env: dict, cwd: Path | None = None):
    start = time.monotonic()
    proc = run_in(cmd, env, cwd)
    return proc, time.monotonic() - start


def run_in(cmd: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **FLAKY_CLEAN, **env})


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    work = tmp_path_factory.mktemp("flaky-ref")
    spec = flaky_job(work, work / "ref.h5")
    proc = run_in(surface_cmd(spec), {}, cwd=work)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(work / "ref.h5", "r") as f:
        return {k: f[k][...] for k in ("train_loss", "train_acc")}


def assert_complete(surface: Path, ref: dict[str, np.ndarray]) -> None:
    with h5py.File(surface, "r") as f:
        assert f["train_done"][...].all()
        for k, v in ref.items():
            np.testing.assert_allclose(f[k][...], v, rtol=1e-6)


def test_a_worker_that_raises_in_the_middle_of_a_unit_ends_the_job(reference, tmp_path):
    surf = tmp_path / "s.h5"
    spec = flaky_job(tmp_path / "spec", surf)
    proc, seconds = timed(mpirun(3) + surface_cmd(spec), {"FLAKY_RANK": "2", "FLAKY_AFTER": "5"})
    assert proc.returncode == 1, proc.stderr
    assert seconds < 30
    line = one_error_line(proc.stderr)
    assert "rank 2: evaluation: a batch of train failed: RuntimeError: CUDA out of memory" in line and "flaky.py" in line, line
    with h5py.File(surf, "r") as f:  # what was written stays written, and the file is readable
        done = f["train_done"][...].astype(bool)
        partial = f["train_loss"][...]
    # rank 1's first unit (4 points) was in flight when rank 2 failed, and a worker finishes its
    # unit: at least those 4 are written, whichever of the two ranks' requests came first after
    assert 4 <= done.sum() < 81
    np.testing.assert_allclose(partial[done], reference["train_loss"][done], rtol=1e-6)
    again = run_in(mpirun(3) + surface_cmd(spec), {})
    assert again.returncode == 0, again.stderr
    assert f"{int(done.sum())} of 81 points done" in again.stderr
    assert_complete(surf, reference)


def test_a_worker_still_busy_when_another_fails_is_ended_within_seconds(tmp_path):
    surf = tmp_path / "s.h5"
    spec = flaky_job(tmp_path / "spec", surf)
    proc, seconds = timed(mpirun(3) + surface_cmd(spec), {"FLAKY_RANK": "2", "FLAKY_AFTER": "5", "SLOW_RANK": "1"})
    ended = time.time()
    assert proc.returncode == 1, proc.stderr
    assert seconds < 100  # not the busy rank's 120 s: it was ended (start-up varies with the load; timed below)
    line = one_error_line(proc.stderr)
    assert "rank 2: evaluation: a batch of train failed: RuntimeError: CUDA out of memory" in line and "ranks 1 did not finish their unit" in line
    # README: "a worker still busy after 10 s is ended": from rank 2's error to the job's end, the
    # busy rank 1 (asleep for 120 s) gets the 10 s and little more; a grace of 25 s, or none, fails
    assert "within 10 s" in line, line
    grace = ended - float((tmp_path / "spec" / "flaky-raised").read_text())
    assert 10.0 <= grace < 20.0, grace
    with h5py.File(surf, "r") as f:
        assert f["train_done"][...].sum() >= 3  # a readable file that keeps its points


def test_an_error_on_the_coordinator_ends_the_job(reference, tmp_path):
    surf = tmp_path / "s.h5"
    spec = flaky_job(tmp_path / "spec", surf)
    proc, seconds = timed(mpirun(3) + surface_cmd(spec), {"BROKEN_RANK": "0"})
    assert proc.returncode == 1 and seconds < 30, proc.stderr
    line = one_error_line(proc.stderr)
    assert "rank 0: RuntimeError: the model factory broke on this rank" in line, line
    assert not surf.exists()
    assert run_in(mpirun(3) + surface_cmd(spec), {}).returncode == 0
    assert_complete(surf, reference)


def test_a_worker_that_cannot_load_its_model_ends_the_job(tmp_path):
    spec = flaky_job(tmp_path / "spec", tmp_path / "s.h5")
    proc, seconds = timed(mpirun(3) + surface_cmd(spec), {"BROKEN_RANK": "1"})
    assert proc.returncode == 1 and seconds < 30, proc.stderr
    assert "rank 1: RuntimeError: the model factory broke" in one_error_line(proc.stderr)
    assert not (tmp_path / "s.h5").exists()  # nothing was created: the corrected run is free


def test_a_missing_gpu_under_mpirun_is_one_line_not_a_hang(reference, tmp_path):
    surf = tmp_path / "s.h5"
    spec = flaky_job(tmp_path / "spec", surf)
    proc, seconds = timed(mpirun(3) + surface_cmd(spec, "--evaluation.device=cuda"), {})
    assert proc.returncode == 1 and seconds < 30, proc.stderr
    line = one_error_line(proc.stderr)
    assert "ranks 1, 2: evaluation.device: 'cuda' asked for, but this process has no usable CUDA GPU" in line
    assert not surf.exists()
    assert run_in(mpirun(3) + surface_cmd(spec), {}).returncode == 0
    assert_complete(surf, reference)


# each variable once and each launch once (not all four pairs: each costs an mpirun job)
@pytest.mark.parametrize("ranks, variable, value", [(1, "CUDA_VISIBLE_DEVICES", "0"), (3, "SLURM_JOB_GPUS", "0,1")])
def test_gpus_given_by_the_allocation_are_never_silently_replaced_by_cpus(tmp_path, variable, value, ranks):
    spec = flaky_job(tmp_path / "spec", tmp_path / "s.h5", grid="-1:1:3")
    cmd = (mpirun(ranks) if ranks > 1 else []) + surface_cmd(spec, "--evaluation.device=auto")
    proc, seconds = timed(cmd, {variable: value})
    assert proc.returncode == 1 and seconds < 30, proc.stderr
    line = one_error_line(proc.stderr)
    assert f"evaluation.device: this process was given GPUs ({variable}={value}) but cannot use them" in line
    assert "CPU-only build" in line and 'evaluation.device = "cpu"' in line
    # the CPU on purpose: runs, and every worker says where it runs
    ok = run_in(mpirun(3) + surface_cmd(spec, "--evaluation.device=cpu"), {variable: value})
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.count("evaluating on cpu with") == 2, ok.stderr


def test_a_first_run_that_fails_on_its_data_leaves_nothing_in_the_way(reference, tmp_path):
    surf = tmp_path / "s.h5"
    spec = flaky_job(tmp_path / "spec", surf)
    for cmd in (surface_cmd(spec, "--data.name=cifar10"), mpirun(3) + surface_cmd(spec, "--data.name=cifar10")):
        proc = run_in(cmd, {})
        assert proc.returncode == 1
        assert "data.root: no such folder" in one_error_line(proc.stderr)
        assert not surf.exists()
    proc = run_in(surface_cmd(spec), {})
    assert proc.returncode == 0, proc.stderr
    assert_complete(surf, reference)


def test_a_factory_beside_the_spec_is_found_from_another_directory(reference, tmp_path):
    spec = flaky_job(tmp_path / "project", tmp_path / "s.h5")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_in(surface_cmd(spec), {"PYTHONPATH": ""}, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert_complete(tmp_path / "s.h5", reference)
    # and one in the working directory, with the spec somewhere else
    moved = tmp_path / "specs" / "job.toml"
    moved.parent.mkdir()
    moved.write_text(spec.read_text().replace(str(tmp_path / "s.h5"), str(tmp_path / "t.h5")))
    proc = run_in(surface_cmd(moved), {"PYTHONPATH": ""}, cwd=tmp_path / "project")
    assert proc.returncode == 0, proc.stderr
    missing = run_in(surface_cmd(moved), {"PYTHONPATH": ""}, cwd=elsewhere)
    assert "model.name: cannot import 'flaky'" in one_error_line(missing.stderr)


@pytest.mark.parametrize("requested, index, gpus, expected", [
    ("auto", 0, 0, "cpu"), ("auto", 3, 4, "cuda:3"), ("auto", 5, 4, "cuda:1"), ("cuda", 2, 2, "cuda:0"),
    ("cuda:1", 0, 2, "cuda:1"), ("cuda:1", 3, 2, "cuda:1"), ("cpu", 1, 8, "cpu"),
    ("cuda", 0, 0, "no usable CUDA GPU"), ("cuda:2", 0, 2, "sees 2 GPU(s) (cuda:0..cuda:1)"),
])
def test_each_worker_device(requested, index, gpus, expected):
    """The README's device table: what each worker of a node takes."""
    from losslandscape.numerics.devices import device_for
    from losslandscape.errors import UserError

    if expected.startswith(("cpu", "cuda:")):
        assert device_for(requested, index, gpus) == expected
    else:
        with pytest.raises(UserError, match=re.escape(expected)):
            device_for(requested, index, gpus)


@pytest.mark.parametrize("environ, given", [
    ({}, None), ({"CUDA_VISIBLE_DEVICES": ""}, None), ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None), ({"SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_GPUS_ON_NODE": "2"}, ("SLURM_GPUS_ON_NODE", "2")),
    ({"SLURM_STEP_GPUS": "1"}, ("SLURM_STEP_GPUS", "1")), ({"SLURM_JOB_GPUS": "0,1"}, ("SLURM_JOB_GPUS", "0,1")),
    ({"CUDA_VISIBLE_DEVICES": "GPU-5d2e"}, ("CUDA_VISIBLE_DEVICES", "GPU-5d2e")),
])
def test_gpus_given_by_the_allocation(environ, given):
    from losslandscape.run.environment import allocated_gpus

    assert allocated_gpus(environ) == given


def test_a_missing_checkpoint_creates_no_file(tmp_path):
    spec = flaky_job(tmp_path / "spec", tmp_path / "s.h5", grid="-1:1:3")
    for cmd in (surface_cmd(spec, "--model.checkpoint=nowhere.pt"),
                mpirun(3) + surface_cmd(spec, "--model.checkpoint=nowhere.pt")):
        proc = run_in(cmd, {})
        assert proc.returncode == 1
        assert "model.checkpoint: no such file 'nowhere.pt'" in one_error_line(proc.stderr)
        assert not (tmp_path / "s.h5").exists()


def test_a_bad_spec_or_shard_under_mpirun_is_one_line(tmp_path):
    spec = flaky_job(tmp_path / "spec", tmp_path / "s.h5", grid="-1:1:3")
    bad_spec = run_in(mpirun(3) + surface_cmd(spec, "--grid.x=1:0:5"), {})
    assert bad_spec.returncode == 1
    assert one_error_line(bad_spec.stderr).startswith("losslandscape: error: grid.x: '1:0:5' is not valid")
    no_shard = run_in(mpirun(2) + [str(BIN / "losslandscape"), "task", str(tmp_path / "none"), "--task", "0"], {})
    assert no_shard.returncode == 1
    assert "task: no shard file" in one_error_line(no_shard.stderr)
