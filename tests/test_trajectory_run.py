"""`losslandscape trajectory`: a real short training run's PCA plane, its path and the surface around
the final model, in one process and under `mpirun`, checked against the checkpoints themselves."""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import pytest
import numpy as np
import torch

from helpers import BIN, launch, mpirun

VALUES = ("train_loss", "train_acc")


def job(tmp_path: Path, trained: dict, name: str = "t", pattern: str | None = None, ignore: str = "biasbn") -> Path:
    run = trained["final"].parent
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f'''
[model]
name = "resnet20"
checkpoint = "{trained['final']}"
[data]
name = "digits"
max_samples = 100
[directions]
kind = "pca"
ignore = "{ignore}"
checkpoints = "{pattern or run / 'model_*.pt'}"
also = ["{run / 'model_[01].pt'}"]
[grid]
x = "-1:1:3"
y = "-1:1:3"
[evaluation]
device = "cpu"
[output]
surface = "{tmp_path / name}.h5"
''')
    return spec


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "losslandscape"), *map(str, args)], capture_output=True, text=True, timeout=300)


def state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in torch.load(path, weights_only=True)["state_dict"].items()}


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_path_lies_on_the_plane_and_reconstructs_the_checkpoints(trained, tmp_path):
    proc = cli("trajectory", job(tmp_path, trained))
    assert proc.returncode == 0, proc.stderr
    assert "PC1 and PC2 explain" in proc.stderr
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["train_done"][...].all()
        names = [n.decode() for n in f["trajectory/checkpoints"][...]]
        x, y, err = (f[f"trajectory/{k}"][...] for k in ("x", "y", "error"))
        dx = {k: torch.from_numpy(f["directions/x"][k][...]).double() for k in f["directions/x"]}
        dy = {k: torch.from_numpy(f["directions/y"][k][...]).double() for k in f["directions/y"]}
        ratio = f.attrs["explained_variance_ratio"]
        also = {k: f[f"trajectory/also/0/{k}"][...] for k in ("x", "y")}
    assert names == ["model_0.pt", "model_1.pt", "model_2.pt"]
    assert ratio.shape == (2,) and 0.99 < ratio.sum() <= 1 + 1e-9  # three points: the plane holds them all
    final = state(trained["final"])
    assert x[-1] == 0 and y[-1] == 0 and err[-1] == 0
    for t, ckpt in enumerate((trained["init"], trained["mid"])):
        c = state(ckpt)
        for k in dx:  # final + x_t dx + y_t dy is the checkpoint (the PCA ran over the weights)
            if dx[k].abs().sum() > 0:
                want = c[k] - final[k]
                got = x[t] * dx[k] + y[t] * dy[k]
                assert torch.linalg.norm(got - want) <= 1e-4 * max(float(torch.linalg.norm(want)), 1e-12)
        assert err[t] < 1e-5
    np.testing.assert_allclose(also["x"], x[:2], rtol=1e-6)
    np.testing.assert_allclose(also["y"], y[:2], rtol=1e-6, atol=1e-9)


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_ignore_none_runs_over_every_entry(trained, tmp_path):
    """directions.ignore = "none" (a value the spec accepts) moves the biases and BatchNorm too."""
    proc = cli("trajectory", job(tmp_path, trained, ignore="none"))
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["train_done"][...].all()
        one_d = [k for k in f["directions/x"] if f["directions/x"][k].ndim == 1]
        assert one_d and any(np.abs(f["directions/x"][k][...]).sum() > 0 for k in one_d)


@pytest.mark.slow
def test_mpirun_equals_one_process_and_the_checkpoints_pin_the_file(trained, tmp_path):
    one = cli("trajectory", job(tmp_path, trained, "one"))
    assert one.returncode == 0, one.stderr
    many = launch(mpirun(3) + [str(BIN / "losslandscape"), "trajectory", str(job(tmp_path, trained, "many"))])
    assert many.returncode == 0, many.stderr
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "many.h5", "r") as b:
        for k in VALUES:
            np.testing.assert_allclose(a[k][...], b[k][...], rtol=1e-6)
        np.testing.assert_array_equal(a["trajectory/x"][...], b["trajectory/x"][...])
    other = job(tmp_path, trained, "one", pattern=trained["final"].parent / "model_[12].pt")
    refused = cli("trajectory", other)
    assert refused.returncode == 1
    assert "directions.checkpoints (sha256): the surface file" in refused.stderr


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_trajectory_needs_pca_directions_and_checkpoints(trained, tmp_path):
    spec = job(tmp_path, trained)
    wrong = cli("trajectory", spec, "--directions.kind=random")
    assert wrong.returncode == 1 and "is not valid for `trajectory`; expected \"pca\"" in wrong.stderr
    none = cli("trajectory", spec, f"--directions.checkpoints={tmp_path / 'nothing_*.pt'}")
    assert none.returncode == 1 and "directions.checkpoints" in none.stderr and "Traceback" not in none.stderr
    assert not (tmp_path / "t.h5").exists()


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_a_trajectory_spec_runs_as_slurm_shards(trained, tmp_path):
    """What `submit` does without a cluster: the PCA plane once, shards computed by tasks, merged."""
    from losslandscape import spec as specs
    from losslandscape.surfacefile import write as surface
    from losslandscape.surfacefile.format import shard_dir
    from losslandscape.numerics.grid import assign_tasks
    from losslandscape.run.work import prepare
    from losslandscape.run.slurm import merge, run_task

    spec = specs.load(job(tmp_path, trained))
    prep = prepare(spec)
    d = shard_dir(prep.path)
    d.mkdir()
    for k, share in enumerate(assign_tasks(prep.pending, 2, 2)):
        surface.create_shard(d / f"task_{k}.h5", prep.path, share, k, 2, spec.to_json(), [])
        assert run_task(d, k) == 0
    assert merge(prep.path) == 9
    reference = cli("trajectory", job(tmp_path, trained, "ref"))
    assert reference.returncode == 0, reference.stderr
    with h5py.File(prep.path, "r") as a, h5py.File(tmp_path / "ref.h5", "r") as b:
        assert a["train_done"][...].all()
        for k in VALUES:
            np.testing.assert_allclose(a[k][...], b[k][...], rtol=1e-6)


@pytest.mark.slow  # several seconds: the full suite runs it, `make check` does not
def test_an_auto_grid_covers_every_path_and_resumes(trained, tmp_path):
    spec = job(tmp_path, trained)
    proc = cli("trajectory", spec, "--grid.x=auto", "--grid.y=auto:5")
    assert proc.returncode == 0, proc.stderr
    assert "grid.x = auto: " in proc.stderr and "plus 10% on each side" in proc.stderr
    with h5py.File(tmp_path / "t.h5", "r") as f:
        xs, ys = f["xcoordinates"][...], f["ycoordinates"][...]
        paths = [(f[f"{g}/x"][...], f[f"{g}/y"][...]) for g in ("trajectory", "trajectory/also/0")]
        stored = f.attrs["spec"]
    assert len(xs) == 21 and len(ys) == 5
    for axis, px in ((xs, np.concatenate([p[0] for p in paths])), (ys, np.concatenate([p[1] for p in paths]))):
        # every checkpoint inside, with 10% of the extent to spare on each side, and the final model on the grid
        span = max(px.max(), 0) - min(px.min(), 0)
        assert axis[0] <= min(px.min(), 0) - 0.1 * span + 1e-9 and axis[-1] >= max(px.max(), 0) + 0.1 * span - 1e-9
        assert axis[-1] - axis[0] <= 1.2 * span * (len(axis) - 1) / (len(axis) - 2) * (1 + 1e-9)
        assert np.isclose(axis, 0.0, rtol=0, atol=1e-12).any()
    assert '"x": "auto"' not in stored  # the file holds the resolved range
    again = cli("trajectory", spec, "--grid.x=auto", "--grid.y=auto:5")
    assert again.returncode == 0 and "105 of 105 points done" in again.stderr, again.stderr
    # random, Hessian and file directions have their own "auto" (test_autorange.py); an interpolation has none
    line = cli("surface", spec, "--directions.kind=interpolate", "--grid.x=auto")
    assert line.returncode == 1 and 'grid.x: "auto" is not available for directions.kind = "interpolate"' in line.stderr
