"""Shard files, merge and status without a cluster; the sbatch scripts against a record."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from losslandscape import spec as specs
from losslandscape.surfacefile import write as surface
from losslandscape.run.driver import run_serial
from losslandscape.run.work import SurfaceWork
from losslandscape.errors import UserError
from losslandscape.numerics.grid import assign_tasks
from losslandscape.run.work import prepare
from losslandscape.surfacefile.format import shard_dir
from losslandscape.run.slurm import merge, render_scripts, run_task
from losslandscape.spec import Submit as SubmitOptions
from losslandscape.run.status import missing_points, status

pytestmark = pytest.mark.slow  # real mpirun, SLURM or whole runs: `make check` leaves this file out

RECORD = Path(__file__).parent / "data" / "sbatch_record.txt"
VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")


def make_spec(tmp_path: Path, ckpt: Path, name: str = "surf.h5", seed: int = 0) -> specs.Spec:
    return specs.from_dict({
        "model": {"name": "resnet20", "checkpoint": str(ckpt)},
        "data": {"name": "digits", "splits": ["train", "test"], "max_samples": 100},
        "directions": {"seed": seed},
        "grid": {"x": "-1:1:5", "y": "-1:1:4"},
        "evaluation": {"device": "cpu", "unit_size": 2},
        "output": {"surface": str(tmp_path / name)},
    })


def make_shards(spec: specs.Spec, tasks: int) -> list[Path]:
    prep = prepare(spec)
    d = shard_dir(prep.path)
    d.mkdir(exist_ok=True)
    paths = []
    for k, share in enumerate(assign_tasks(prep.pending, tasks, spec.evaluation.unit_size)):
        surface.create_shard(d / f"task_{k}.h5", prep.path, share, k, tasks, spec.to_json(), [])
        paths.append(d / f"task_{k}.h5")
    return paths


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sbatch_scripts_match_the_record():
    opts = SubmitOptions(tasks=8, ranks_per_task=4, gpus_per_task=1, launcher="srun", partition="gpu",
                         time="12:00:00", account="proj42", sbatch_args=["--qos=high", "--constraint=a100"])
    array, merge_script = render_scripts(Path("/scratch/me/out/resnet56.h5"), opts, array_job_id="4242",
                                         python="/home/me/losslandscape/.venv/bin/python",
                                         workdir=Path("/home/me/losslandscape"), as_root=False)
    opts_mpirun = SubmitOptions(tasks=3, ranks_per_task=2)
    array2, _ = render_scripts(Path("/scratch/me/out/small.h5"), opts_mpirun, python="/usr/bin/python3",
                               workdir=Path("/home/me"), as_root=True)
    text = "\n".join(["### array (srun)", array, "### merge", merge_script, "### array (mpirun, root)", array2])
    if os.environ.get("LOSSLANDSCAPE_RECORD"):
        RECORD.write_text(text)
    assert text == RECORD.read_text(), "sbatch templates changed: review, then rerun with LOSSLANDSCAPE_RECORD=1"


def test_shards_computed_and_merged_equal_one_process(trained, tmp_path):
    ref = make_spec(tmp_path / "ref", trained["final"])
    assert run_serial(SurfaceWork(ref)) == 0
    spec = make_spec(tmp_path, trained["final"])
    shards = make_shards(spec, 3)
    points = [len(h5py.File(p, "r")["points"]) for p in shards]
    assert sum(points) == 20 and min(points) >= 6
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # task 0 under mpirun (coordinator + worker), task 1 as one process, task 2 not at all yet
    mpirun = ["mpirun", "--oversubscribe", "-n", "2"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    proc = subprocess.run(mpirun + [sys.executable, "-m", "losslandscape", "task", str(shards[0].parent),
                                    "--task", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert run_task(shards[0].parent, 1) == 0
    path = tmp_path / "surf.h5"
    report = status(path)
    assert [s["done"] for s in report["shards"]] == [points[0], points[1], 0]
    assert report["remaining"] == points[2] and report["eta_seconds"] > 0
    assert merge(path) == points[0] + points[1]
    assert missing_points(path) == {"train": points[2], "test": points[2]}
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "merge", str(path)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 4 and f"train {points[2]}" in proc.stderr
    assert run_task(shards[0].parent, 2) == 0
    assert merge(path) == points[2]
    before = sha(path)
    assert merge(path) == 0  # the second merge changes nothing, not even a byte
    assert sha(path) == before
    with h5py.File(path, "r") as f, h5py.File(tmp_path / "ref" / "surf.h5", "r") as g:
        for k in VALUES:
            np.testing.assert_allclose(f[k][...], g[k][...], rtol=1e-6)
        assert f["train_done"][...].all() and f["test_done"][...].all()


def test_merge_refuses_a_shard_of_another_surface(trained, tmp_path):
    spec = make_spec(tmp_path, trained["final"])
    make_shards(spec, 2)
    other = make_spec(tmp_path / "other", trained["final"], seed=5)
    foreign = make_shards(other, 1)[0]
    run_task(foreign.parent, 0)
    target = shard_dir(tmp_path / "surf.h5") / "task_2.h5"
    foreign.replace(target)
    before = sha(tmp_path / "surf.h5")
    with pytest.raises(UserError, match="belongs to another surface"):
        merge(tmp_path / "surf.h5")
    assert sha(tmp_path / "surf.h5") == before



def test_merge_never_marks_a_point_done_without_its_values(trained, tmp_path):
    spec = make_spec(tmp_path, trained["final"])
    (shard,) = make_shards(spec, 1)
    assert run_task(shard.parent, 0) == 0
    with h5py.File(shard, "r+") as f:  # a done flag whose values never reached the file
        first = int(f["points"][0])
        idx = np.unravel_index(first, f["test_done"].shape)
        f["test_acc"][idx] = np.nan
        f["test_loss"][idx] = np.nan
    assert merge(tmp_path / "surf.h5") == 20  # its train values are there; its test values are not
    with h5py.File(tmp_path / "surf.h5", "r") as f:
        assert f["train_done"][idx] == 1 and f["test_done"][idx] == 0
        assert f["test_done"][...].sum() == 19 and np.isnan(f["test_acc"][idx])
    assert missing_points(tmp_path / "surf.h5") == {"train": 0, "test": 1}


def test_submit_checks_the_data_before_it_creates_anything(trained, tmp_path):
    from losslandscape.run.slurm import submit

    spec = make_spec(tmp_path, trained["final"])
    spec.data.name = "cifar10"
    spec.data.root = str(tmp_path / "no-cifar")
    with pytest.raises(UserError, match="data.root: no such folder"):
        submit(spec, SubmitOptions(2))
    assert not (tmp_path / "surf.h5").exists() and not shard_dir(tmp_path / "surf.h5").exists()
