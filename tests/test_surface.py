"""The one-process surface: directions, evaluation, the file, resume, signals.

Numbers are checked against independent computations: plain forward passes of
a freshly loaded model whose weights are set by hand, norms computed here.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape.numerics import directions as dirs
from losslandscape import spec as specs
from losslandscape.run.driver import run_serial
from losslandscape.run.work import SurfaceWork
from losslandscape.errors import UserError
from losslandscape.run.work import prepare
from losslandscape.inputs.models import build_model

from helpers import BIN, ctrl_c_as_at_a_terminal, fresh_model, plain_pass, sha, write_job


def make_spec(tmp_path: Path, ckpt: Path, **tables) -> specs.Spec:
    table = {
        "model": {"name": "resnet20", "checkpoint": str(ckpt)},
        "data": {"name": "digits", "splits": ["train", "test"], "max_samples": 300},
        "grid": {"x": "-1:1:3", "y": "-1:1:3"},
        "evaluation": {"device": "cpu", "batch_size": 128},
        "output": {"surface": str(tmp_path / "surf.h5")},
    }
    for name, values in tables.items():
        table.setdefault(name, {}).update(values)
    return specs.from_dict(table)


def read_file_directions(path: Path) -> tuple[dict, dict | None]:
    with h5py.File(path, "r") as f:
        g = f["directions"]
        x = {k: torch.from_numpy(g["x"][k][...]) for k in g["x"]}
        y = {k: torch.from_numpy(g["y"][k][...]) for k in g["y"]} if "y" in g else None
    return x, y


# --- directions -------------------------------------------------------------------------

@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_filter_normalised_direction_has_the_weights_filter_norms(trained):
    model = fresh_model(trained["final"])
    weights = dirs.target_tensors(model, "weights")
    x, y, info = dirs.random_directions(weights, True, "filter", "biasbn", seed=3, orthogonal=False)
    checked = 0
    for name, w in weights.items():
        if w.dim() <= 1:
            assert torch.count_nonzero(x[name]) == 0, f"biasbn entry {name} must be zero"
            continue
        for i in range(w.shape[0]):  # every filter, one at a time
            assert torch.allclose(x[name][i].norm(), w[i].norm(), rtol=1e-5)
            assert torch.allclose(y[name][i].norm(), w[i].norm(), rtol=1e-5)
            checked += 1
    assert checked > 100
    assert not torch.equal(x["conv1.weight"], y["conv1.weight"])


def test_layer_and_unit_norms():
    torch.manual_seed(0)
    weights = {"a.weight": torch.randn(4, 3, 3, 3), "b.weight": torch.randn(5, 7), "b.bias": torch.randn(5)}
    gen = torch.Generator().manual_seed(0)
    d = dirs.normalize({k: torch.randn(w.shape, generator=gen) for k, w in weights.items()}, weights, "layer", "none")
    assert torch.allclose(d["a.weight"].norm(), weights["a.weight"].norm(), rtol=1e-5)
    assert torch.equal(d["b.bias"], weights["b.bias"])  # 1-D entries follow the weights when not ignored
    d = dirs.normalize({k: torch.randn(w.shape, generator=gen) for k, w in weights.items()}, weights, "dfilter", "biasbn")
    assert torch.allclose(d["a.weight"].flatten(1).norm(dim=1), torch.ones(4), rtol=1e-5)
    d = dirs.normalize({k: torch.randn(w.shape, generator=gen) for k, w in weights.items()}, weights, "dlayer", "biasbn")
    assert torch.allclose(d["b.weight"].norm(), torch.tensor(1.0), rtol=1e-5)


def test_orthogonal_second_direction():
    weights = {"w": torch.randn(8, 4, 3, 3), "v": torch.randn(6, 5)}
    x, y, info = dirs.random_directions(weights, True, "filter", "biasbn", 0, orthogonal=True)
    dot = sum((x[k].double() * y[k].double()).sum() for k in x)
    assert abs(dot.item()) < 1e-6 * float(sum(x[k].double().norm() ** 2 for k in x))
    assert abs(info["cosine_xy"]) < 1e-6


def test_states_direction_moves_batchnorm_statistics(trained, tmp_path):
    spec = make_spec(tmp_path, trained["mid"], directions={"kind": "interpolate", "dir_type": "states"},
                     model={"checkpoint2": str(trained["final"])}, grid={"x": "0:1:2", "y": ""})
    assert run_serial(SurfaceWork(spec)) == 0
    x, _ = read_file_directions(tmp_path / "surf.h5")
    mid = torch.load(trained["mid"], weights_only=True)["state_dict"]
    final = torch.load(trained["final"], weights_only=True)["state_dict"]
    assert "bn1.running_mean" in x and "bn1.running_var" in x
    assert torch.allclose(x["bn1.running_mean"], final["bn1.running_mean"] - mid["bn1.running_mean"])
    assert torch.count_nonzero(x["bn1.running_mean"]) > 0


# --- evaluation against plain forward passes ----------------------------------------------

def test_grid_points_equal_plain_forward_passes(trained, tmp_path):
    spec = make_spec(tmp_path, trained["final"], grid={"x": "-0.5:0.5:3", "y": "-0.5:0.5:3"})
    assert run_serial(SurfaceWork(spec)) == 0
    path = tmp_path / "surf.h5"
    x, y = read_file_directions(path)
    with h5py.File(path, "r") as f:
        values = {k: f[k][...] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "train_done")}
        xs, ys = f["xcoordinates"][...], f["ycoordinates"][...]
        assert f.attrs["format"] == "losslandscape-surface"
    assert values["train_done"].shape == (3, 3) and values["train_done"].all()
    base = torch.load(trained["final"], weights_only=True)["state_dict"]
    for j, i in [(0, 0), (1, 1), (2, 0), (1, 2)]:
        a, b = xs[i], ys[j]
        moved = {k: (v + a * x[k] + b * y[k]) if k in x else v for k, v in base.items()}
        model = build_model("resnet20", in_channels=1)
        model.load_state_dict(moved)
        model.eval()
        for split in ("train", "test"):
            loss, acc = plain_pass(model, split)
            assert values[f"{split}_loss"][j, i] == pytest.approx(loss, rel=1e-5)
            assert values[f"{split}_acc"][j, i] == pytest.approx(acc, abs=1e-9)
    # the centre is the trained model itself
    loss, acc = plain_pass(fresh_model(trained["final"]), "test")
    assert values["test_loss"][1, 1] == pytest.approx(loss, rel=1e-5)


def test_mse_loss_and_partial_last_batch(trained, tmp_path):
    # 300 samples in batches of 128: the last batch has 44 and must weigh 44/300
    spec = make_spec(tmp_path, trained["final"], grid={"x": "0:0:1", "y": ""},
                     evaluation={"loss": "mse", "batch_size": 128}, data={"splits": ["test"]})
    assert run_serial(SurfaceWork(spec)) == 0
    model = fresh_model(trained["final"])
    datasets._load.cache_clear()
    xs, ys = datasets._load("digits", "", "test", 300, 0)
    with torch.no_grad():
        p = model(xs).double().softmax(1)
    expected = ((p - F.one_hot(ys, 10).double()) ** 2).mean().item()
    with h5py.File(tmp_path / "surf.h5", "r") as f:
        assert f["test_loss"][0] == pytest.approx(expected, rel=1e-5)
        assert np.isnan(f["train_loss"][0]) and f["train_done"][0] == 0


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_interpolation_end_points_are_the_two_models(trained, tmp_path, caplog):
    """The default for kind = "interpolate" moves BatchNorm statistics too, so x = 1 is the second model."""
    spec = make_spec(tmp_path, trained["init"], directions={"kind": "interpolate"},
                     model={"checkpoint2": str(trained["final"])}, grid={"x": "0:1:3", "y": ""})
    assert spec.directions.dir_type == "states"
    with caplog.at_level("INFO"):
        assert run_serial(SurfaceWork(spec)) == 0
    assert "interpolation test x = 1: loss" in caplog.text and "model.checkpoint2 itself: loss" in caplog.text
    assert "is not the second model" not in caplog.text
    with h5py.File(tmp_path / "surf.h5", "r") as f:
        loss = f["test_loss"][...]
        acc = f["test_acc"][...]
        assert loss.shape == (3,)
    for i, ckpt in ((0, trained["init"]), (2, trained["final"])):
        ref_loss, ref_acc = plain_pass(fresh_model(ckpt), "test")
        assert loss[i] == pytest.approx(ref_loss, rel=1e-5)
        assert acc[i] == pytest.approx(ref_acc, abs=1e-9)


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_interpolating_weights_only_warns_that_x_1_is_not_the_second_model(trained, tmp_path, caplog):
    spec = make_spec(tmp_path, trained["init"], directions={"kind": "interpolate", "dir_type": "weights"},
                     model={"checkpoint2": str(trained["final"])}, grid={"x": "0:1:2", "y": ""})
    with caplog.at_level("INFO"):
        assert run_serial(SurfaceWork(spec)) == 0
    assert "x = 1 is not the second model" in caplog.text and 'use dir_type = "states"' in caplog.text
    with h5py.File(tmp_path / "surf.h5", "r") as f:
        far = f["test_loss"][1]
    own, _ = plain_pass(fresh_model(trained["final"]), "test")
    assert abs(far - own) > 1e-3 * own  # what the warning is about


# --- resume --------------------------------------------------------------------------------

@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_resume_computes_only_missing_points_with_identical_values(trained, tmp_path):
    clean = make_spec(tmp_path / "clean", trained["final"])
    assert run_serial(SurfaceWork(clean)) == 0
    spec = make_spec(tmp_path, trained["final"])
    prepare(spec)  # the file with directions, nothing computed
    path = tmp_path / "surf.h5"
    # compute only the train split first, then the rest
    first = make_spec(tmp_path, trained["final"], data={"splits": ["train"]})
    assert run_serial(SurfaceWork(first)) == 0
    with h5py.File(path, "r") as f:
        assert f["train_done"][...].all() and not f["test_done"][...].any()
    with h5py.File(path, "r+") as f:
        f["train_done"][0, 0] = 0  # a point whose train values were lost
        f["train_loss"][0, 0] = np.nan
        f["train_loss"][2, 2] = 123.0  # a sentinel: a done value must never be recomputed
    assert len(prepare(spec).pending) == 9  # every test point, one of them also train
    assert run_serial(SurfaceWork(spec)) == 0
    with h5py.File(path, "r") as f, h5py.File(tmp_path / "clean" / "surf.h5", "r") as g:
        assert f["train_loss"][2, 2] == 123.0
        for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
            a, b = f[name][...], g[name][...]
            if name == "train_loss":
                a[2, 2] = b[2, 2]
            np.testing.assert_array_equal(a, b)
    assert len(prepare(spec).pending) == 0


@pytest.mark.slow  # three command lines
def test_refused_resume_leaves_the_file_untouched(trained, tmp_path):
    spec = make_spec(tmp_path, trained["final"])
    assert run_serial(SurfaceWork(spec)) == 0
    path = tmp_path / "surf.h5"
    before = sha(path)
    for change, key in (({"directions": {"seed": 1}}, "directions.seed"),
                        ({"grid": {"x": "-1:1:5"}}, "grid.x"),
                        ({"data": {"max_samples": 200}}, "data.max_samples"),
                        ({"model": {"checkpoint": str(trained["mid"])}}, "model.checkpoint"),
                        ({"evaluation": {"loss": "mse"}}, "evaluation.loss")):
        other = make_spec(tmp_path, trained["final"], **change)
        with pytest.raises(UserError, match=key) as err:
            run_serial(SurfaceWork(other))
        assert "\n" not in str(err.value)
        assert sha(path) == before


def test_corrupt_and_foreign_files_are_clear_errors(trained, tmp_path):
    path = tmp_path / "surf.h5"
    path.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        prepare(make_spec(tmp_path, trained["final"]))
    path.unlink()
    with h5py.File(path, "w") as f:
        f["something"] = np.arange(3)
    with pytest.raises(UserError, match="not a surface file"):
        prepare(make_spec(tmp_path, trained["final"]))
    # one of ours, with a dataset missing
    path.unlink()
    prepare(make_spec(tmp_path, trained["final"]))
    with h5py.File(path, "r+") as f:
        del f["test_done"]
    with pytest.raises(UserError, match="damaged"):
        prepare(make_spec(tmp_path, trained["final"]))


# --- the command line ----------------------------------------------------------------------

def write_toml(path: Path, ckpt: Path, surface: Path, grid_x: str, grid_y: str, max_samples: int = 300) -> Path:
    return write_job(path, ckpt, surface, grid_x, grid_y, max_samples, unit=2, splits=("train",), threads=1)


@pytest.mark.slow  # a command line a value, seconds each
@pytest.mark.parametrize("override, key", [
    ("--grid.x=1:0:5", "grid.x"), ("--grid.x=a:b", "grid.x"), ("--grid.y=-1:1:0", "grid.y"),
    ("--directions.norm=banana", "directions.norm"), ("--evaluation.batch_size=-1", "evaluation.batch_size"),
])
def test_bad_values_are_one_line_exit_1(trained, tmp_path, override, key):
    toml = write_toml(tmp_path / "s.toml", trained["final"], tmp_path / "surf.h5", "-1:1:3", "-1:1:3")
    proc = subprocess.run([BIN / "losslandscape", "surface", str(toml), override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("losslandscape: error: " + key), proc.stderr
    assert not (tmp_path / "surf.h5").exists()


@pytest.mark.slow  # several seconds: the full suite runs it, `make check` does not
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_with_exit_3_and_the_file_resumes(trained, tmp_path, signum):
    surf = tmp_path / "surf.h5"
    toml = write_toml(tmp_path / "s.toml", trained["final"], surf, "-1:1:9", "-1:1:9", max_samples=100)
    proc = subprocess.Popen([BIN / "losslandscape", "surface", str(toml)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if surf.exists():
            try:
                with h5py.File(surf, "r", locking=False) as f:
                    done = int(f["train_done"][...].sum())
            except (OSError, KeyError):
                continue
            if done >= 4:
                break
    assert proc.poll() is None, "the run finished before it could be signalled; make the grid larger"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    with h5py.File(surf, "r") as f:
        flags = f["train_done"][...]
        loss = f["train_loss"][...]
    assert 4 <= flags.sum() < 81
    assert np.isfinite(loss[flags == 1]).all() and np.isnan(loss[flags == 0]).all()
    proc = subprocess.run([BIN / "losslandscape", "surface", str(toml)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{int(flags.sum())} of 81 points done" in proc.stderr
    with h5py.File(surf, "r") as f:
        assert f["train_done"][...].all()
        np.testing.assert_array_equal(f["train_loss"][...][flags == 1], loss[flags == 1])


def test_directions_verb_then_directions_from_our_file(trained, tmp_path):
    toml = write_toml(tmp_path / "s.toml", trained["final"], tmp_path / "a.h5", "-1:1:3", "-1:1:3")
    proc = subprocess.run([BIN / "losslandscape", "directions", str(toml)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert not f["train_done"][...].any()  # only the directions: nothing computed
        assert "conv1.weight" in f["directions/x"] and "conv1.weight" in f["directions/y"]
    # a second surface along the same directions, read from the first file
    spec = make_spec(tmp_path / "b", trained["final"], directions={"kind": "file", "file": str(tmp_path / "a.h5")})
    prepare(spec)
    xa, ya = read_file_directions(tmp_path / "a.h5")
    xb, yb = read_file_directions(tmp_path / "b" / "surf.h5")
    for k in xa:
        assert torch.equal(xa[k], xb[k]) and torch.equal(ya[k], yb[k])


def test_resuming_with_another_directions_file_is_refused(trained, tmp_path):
    for name, seed in (("a.h5", 0), ("b.h5", 1)):  # two direction sources
        prepare(make_spec(tmp_path / name, trained["final"], directions={"seed": seed}))
    spec = make_spec(tmp_path, trained["final"], directions={"kind": "file", "file": str(tmp_path / "a.h5" / "surf.h5")})
    prepare(spec)
    before = sha(tmp_path / "surf.h5")
    other = make_spec(tmp_path, trained["final"], directions={"kind": "file", "file": str(tmp_path / "b.h5" / "surf.h5")})
    with pytest.raises(UserError, match=r"directions.file \(sha256\): the surface file .* was made with"):
        prepare(other)
    assert sha(tmp_path / "surf.h5") == before


@pytest.mark.parametrize("precision, fold, expected", [
    ("fp32", True, "BatchNorm folded into 19 convolutions (fp32 check"),
    ("bf16", True, "BatchNorm folded into 19 convolutions (fp32 check"),
    ("fp32", False, "BatchNorm folding off (evaluation.fold_batchnorm = false)"),
])
def test_the_file_says_how_batchnorm_was_evaluated(trained, tmp_path, caplog, precision, fold, expected):
    """Folding is checked in fp32 before the precision is lowered, and the outcome is in the log and the file."""
    spec = make_spec(tmp_path, trained["final"], grid={"x": "0:0:1", "y": ""},
                     evaluation={"precision": precision, "fold_batchnorm": fold})
    with caplog.at_level("INFO"):
        assert run_serial(SurfaceWork(spec)) == 0
    assert expected in caplog.text
    with h5py.File(tmp_path / "surf.h5", "r") as f:
        assert expected in f.attrs["batchnorm_folding"]


@pytest.mark.parametrize("x, y, warned", [("-1:1:4", "", ["grid.x"]), ("-1:1:3", "0.5:1:2", ["grid.y"]),
                                          ("-1:1:3", "-1:1:3", [])])
def test_a_grid_without_the_centre_says_so(trained, tmp_path, caplog, x, y, warned):
    spec = make_spec(tmp_path, trained["final"], grid={"x": x, "y": y}, data={"max_samples": 20})
    with caplog.at_level("WARNING"):
        prepare(spec)
    for key in ("grid.x", "grid.y"):
        assert (f"{key} = " in caplog.text and "is not on the grid" in caplog.text) == (key in warned)
