"""Files of the original loss-landscape code (Li et al.): converted right or not at all.

The original files are written here with h5py exactly as that code lays them
out: direction files with groups xdirection / ydirection of datasets "0", "1",
... over `model.parameters()` (weights) or over every `model.state_dict()`
entry, num_batches_tracked included (states); surface files with `dir_file`,
the coordinates and (nx, ny) arrays of values, -1 for points not computed.
Their values come from plain forward passes of the moved model.
"""

from __future__ import annotations

import json
import os
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from losslandscape.numerics import directions as dirs
from losslandscape.surfacefile.read import read_direction_file
from losslandscape.surfacefile import original
from losslandscape import spec as specs
from losslandscape.surfacefile import write as surface
from losslandscape.run.driver import run_serial
from losslandscape.run.work import SurfaceWork, prepare
from losslandscape.errors import UserError
from losslandscape.inputs.models import build_model

from helpers import BIN, fresh_model, plain_pass, sha

log = logging.getLogger(__name__)

SAMPLES = 200
GRID = ("-0.4:0.4:3", "-0.3:0.3:2")  # nx != ny, so a transposed layout cannot pass
VALUE_NAMES = ("train_loss", "train_acc", "test_loss", "test_acc")


def convert(spec):
    """An original file converted the way the command line does it (`losslandscape directions`,
    the first steps of `surface`: plan, make, create under the file's write lock), nothing
    evaluated. Returns the run's Prepared: `created` where the file was converted."""
    return prepare(spec)


# --- original files, written the way the original code writes them -------------------------

def original_direction(w: torch.Tensor, gen: torch.Generator, one_d: str) -> torch.Tensor:
    """A Gaussian direction for one entry, filter-normalised; 1-D and scalar entries zeroed
    (ignore = biasbn) or set to the entry itself (the original code without ignore)."""
    w = w.detach().float()
    d = torch.randn(w.shape, generator=gen)
    if d.dim() <= 1:
        return torch.zeros_like(d) if one_d == "zero" else w.clone()
    scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
    return d * scale.view(-1, *[1] * (d.dim() - 1))


def write_original_directions(path: Path, model: torch.nn.Module, dir_type: str, seed: int = 0) -> dict:
    """An original direction file for `model`; returns {"x"/"y": {entry name: direction}}."""
    if dir_type == "weights":
        named = [(n, p.data) for n, p in model.named_parameters()]
    else:  # every state entry, integer num_batches_tracked buffers included
        named = list(model.state_dict().items())
    assert dir_type == "weights" or any(not t.is_floating_point() for _, t in named)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with h5py.File(path, "w") as f:
        for axis in ("x", "y"):
            ds = [original_direction(w, gen, "zero" if dir_type == "weights" else "copy") for _, w in named]
            group = f.create_group(f"{axis}direction")
            for i, d in enumerate(ds):
                group.create_dataset(str(i), data=d.numpy())
            out[axis] = {n: d for (n, _), d in zip(named, ds)}
    return out


def moved_model(ckpt: Path, d: dict, a: float, b: float) -> torch.nn.Module:
    """The checkpoint's model with every floating entry of the directions moved by a*dx + b*dy, in eval mode."""
    model = fresh_model(ckpt)
    state = model.state_dict()
    moved = {k: (v + a * d["x"][k] + b * d["y"][k]) if k in d["x"] and v.is_floating_point() else v
             for k, v in state.items()}
    model.load_state_dict(moved)
    return model.eval()


def original_values(ckpt: Path, d: dict, xs: np.ndarray, ys: np.ndarray, computed: dict[str, list[int]]) -> dict:
    """The original code's value arrays: (nx, ny), -1 everywhere but at the `computed` flat points of
    each split; flat point k is (xs[k % nx], ys[k // nx]), the order of np.meshgrid(xs, ys).ravel()."""
    values = {name: -np.ones((len(xs), len(ys))) for name in VALUE_NAMES}
    for split, points in computed.items():
        for k in points:
            loss, acc = plain_pass(moved_model(ckpt, d, xs[k % len(xs)], ys[k // len(xs)]), split, SAMPLES)
            values[f"{split}_loss"].flat[k] = loss
            values[f"{split}_acc"].flat[k] = acc
    return values


def write_original_surface(path: Path, dir_file: str, xs: np.ndarray, ys: np.ndarray | None, values: dict) -> None:
    with h5py.File(path, "w") as f:
        f["dir_file"] = dir_file
        f["xcoordinates"] = xs
        if ys is not None:
            f["ycoordinates"] = ys
        for name, v in values.items():
            f[name] = v


def tables(ckpt: Path, out: Path, dir_file: Path | None = None, dir_type: str = "weights",
           grid: tuple[str, str] = GRID, splits=("train", "test")) -> dict:
    return {
        "model": {"name": "resnet20", "checkpoint": str(ckpt)},
        "data": {"name": "digits", "splits": list(splits), "max_samples": SAMPLES},
        "directions": ({"kind": "file", "file": str(dir_file), "dir_type": dir_type} if dir_file
                       else {"kind": "random", "dir_type": dir_type}),
        "grid": {"x": grid[0], "y": grid[1]},
        "evaluation": {"device": "cpu", "batch_size": 128, "threads": 1},
        "output": {"surface": str(out)},
    }


def write_toml(path: Path, t: dict) -> Path:
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                            for name, table in t.items()))
    return path


def axes_of(grid: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    (x0, x1, nx), (y0, y1, ny) = (g.split(":") for g in grid)
    return np.linspace(float(x0), float(x1), num=int(nx)), np.linspace(float(y0), float(y1), num=int(ny))


@pytest.fixture(scope="module")
def weights_case(trained, tmp_path_factory) -> dict:
    """A weights direction file and an original surface made with it: train computed at 3 of the
    6 points, test at 2 (plain forward passes), the rest -1. Tests copy the surface file."""
    root = tmp_path_factory.mktemp("original")
    dir_file = root / "dirs.h5"
    d = write_original_directions(dir_file, fresh_model(trained["final"]), "weights")
    xs, ys = axes_of(GRID)
    computed = {"train": [0, 2, 4], "test": [1, 4]}
    values = original_values(trained["final"], d, xs, ys, computed)
    surf = root / "orig.h5"
    write_original_surface(surf, str(dir_file), xs, ys, values)
    return {"dir_file": dir_file, "surface": surf, "values": values, "computed": computed, "d": d}


def copy_surface(case: dict, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "orig.h5"
    path.write_bytes(case["surface"].read_bytes())
    return path


def assert_converted(path: Path, case: dict) -> None:
    """A complete conversion: our format, every dataset, the original's values exactly where done."""
    with h5py.File(path, "r", locking=False) as f:
        assert surface.is_ours(f)
        surface.check_structure(f, path)
        assert "y" in f["directions"] and f["train_loss"].shape == (2, 3)
        for split in ("train", "test"):
            done = np.zeros(6, bool)
            done[case["computed"][split]] = True
            np.testing.assert_array_equal(f[f"{split}_done"][...].ravel(), done.astype(np.uint8))
            for value in ("loss", "acc"):
                got = f[f"{split}_{value}"][...].ravel()
                np.testing.assert_array_equal(got[done], case["values"][f"{split}_{value}"].ravel()[done])
                assert np.isnan(got[~done]).all()


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_original_surface_without_its_direction_file_is_refused_untouched(trained, weights_case, tmp_path):
    path = copy_surface(weights_case, tmp_path)
    before = sha(path)
    spec = specs.from_dict(tables(trained["final"], path))  # random directions
    with pytest.raises(UserError) as err:
        convert(spec)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("directions.kind: ")
    assert repr(str(weights_case["dir_file"])) in msg and "dir_file" in msg
    assert sha(path) == before
    with pytest.raises(UserError, match="directions.kind"):
        run_serial(SurfaceWork(spec))
    assert sha(path) == before

    # another direction file than the surface's dir_file: refused by SHA-256
    other = tmp_path / "other.h5"
    write_original_directions(other, fresh_model(trained["final"]), "weights", seed=1)
    spec = specs.from_dict(tables(trained["final"], path, other))
    with pytest.raises(UserError, match=r"^directions.file: .*SHA-256 differs") as err:
        convert(spec)
    assert "\n" not in str(err.value) and str(weights_case["dir_file"]) in str(err.value)
    assert sha(path) == before

    # directions and values in one file (the original code allowed that): the conversion would replace both
    spec = specs.from_dict(tables(trained["final"], path, path))
    with pytest.raises(UserError, match="^directions.file: .* is the surface file itself"):
        convert(spec)
    assert sha(path) == before

    # the right directions, another grid
    spec = specs.from_dict(tables(trained["final"], path, weights_case["dir_file"], grid=("-0.4:0.4:5", GRID[1])))
    with pytest.raises(UserError, match="^grid.x: "):
        convert(spec)
    assert sha(path) == before
    assert not (tmp_path / ".orig.h5.converting").exists()


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_cli_refuses_an_original_surface_without_its_direction_file(trained, weights_case, tmp_path):
    path = copy_surface(weights_case, tmp_path)
    before = sha(path)
    toml = write_toml(tmp_path / "spec.toml", tables(trained["final"], path))
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "surface", str(toml)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("losslandscape: error: directions.kind: "), proc.stderr
    assert str(weights_case["dir_file"]) in errors[0]
    assert sha(path) == before


# --- adoption --------------------------------------------------------------------------------

def test_an_original_file_is_adopted_with_its_values_and_directions(trained, weights_case, tmp_path, caplog):
    path = copy_surface(weights_case, tmp_path)
    spec = specs.from_dict(tables(trained["final"], path, weights_case["dir_file"]))
    with caplog.at_level(logging.INFO, logger="losslandscape"):
        assert convert(spec).created is True
    assert any("adopted" in r.getMessage() and "train 3 and test 2 of 6" in r.getMessage() for r in caplog.records)
    assert_converted(path, weights_case)
    with h5py.File(path, "r") as f:
        stored_x = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
        assert "adopted_from" in f.attrs and f.attrs["original_dir_file"] == str(weights_case["dir_file"])
    for name, d in weights_case["d"]["x"].items():
        assert torch.equal(stored_x[name], d)
    assert not (tmp_path / ".orig.h5.converting").exists()
    converted = sha(path)
    assert convert(spec).created is False  # ours now: left alone
    assert sha(path) == converted

    # the resumed values against plain forward passes of the moved model:
    # test_points_not_adopted_from_an_original_file_equal_plain_forward_passes


def test_a_one_d_original_with_a_relative_dir_file(trained, weights_case, tmp_path):
    """dir_file as the original code stores it (relative to where it ran) is found beside the surface."""
    (tmp_path / "dirs.h5").write_bytes(weights_case["dir_file"].read_bytes())
    xs = np.linspace(-0.5, 0.5, 5)
    with h5py.File(tmp_path / "curve.h5", "w") as f:
        f["dir_file"] = "runs/model_300.t7/dirs.h5"
        f["xcoordinates"] = xs
        f["train_loss"] = np.array([1.5, -1, 0.25, -1, np.nan])  # NaN: computed, diverged
        f["train_acc"] = np.array([10.0, -1, 90.0, -1, 0.0])
    before = sha(tmp_path / "curve.h5")
    t = tables(trained["final"], tmp_path / "curve.h5", grid=("-0.5:0.5:5", ""))
    with pytest.raises(UserError, match=f'directions.file = "{tmp_path / "dirs.h5"}"'):
        convert(specs.from_dict(t))
    assert sha(tmp_path / "curve.h5") == before
    t["directions"] = {"kind": "file", "file": str(weights_case["dir_file"])}  # same bytes, other place
    assert convert(specs.from_dict(t)).created is True
    with h5py.File(tmp_path / "curve.h5", "r") as f:
        assert "ycoordinates" not in f and "y" not in f["directions"]
        np.testing.assert_array_equal(f["train_done"][...], [1, 0, 1, 0, 1])
        np.testing.assert_array_equal(f["train_loss"][...], [1.5, np.nan, 0.25, np.nan, np.nan])
        np.testing.assert_array_equal(f["train_acc"][...], [10.0, np.nan, 90.0, np.nan, 0.0])
        assert not f["test_done"][...].any()


# --- crash safety ----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["create", "replace"])
def test_a_failed_conversion_leaves_the_original_and_a_retry_converts(trained, weights_case, tmp_path,
                                                                      monkeypatch, where):
    path = copy_surface(weights_case, tmp_path)
    before = sha(path)
    spec = specs.from_dict(tables(trained["final"], path, weights_case["dir_file"]))
    tmp = tmp_path / ".orig.h5.converting"
    if where == "create":
        real = surface.create

        def create_then_fail(f, *args, **kwargs):
            real(f, *args, **kwargs)
            assert tmp.exists()  # the failure comes after writing has started
            raise OSError("No space left on device")

        monkeypatch.setattr(surface, "create", create_then_fail)
    else:  # the converted file is complete and synced; only the rename fails
        def fail_replace(src, dst):
            raise OSError("Input/output error")

        monkeypatch.setattr(original.os, "replace", fail_replace)
    with pytest.raises(OSError):
        convert(spec)
    monkeypatch.undo()
    assert sha(path) == before
    assert not tmp.exists()

    tmp.write_bytes(b"the half-written leftover of a killed conversion")
    assert convert(spec).created is True
    assert_converted(path, weights_case)
    assert not tmp.exists()




@pytest.mark.slow  # several seconds: the full suite runs it, `make check` does not
def test_sigkill_during_conversion_leaves_original_or_converted(trained, weights_case, tmp_path):
    path = copy_surface(weights_case, tmp_path)
    before = path.read_bytes()
    toml = write_toml(tmp_path / "spec.toml", tables(trained["final"], path, weights_case["dir_file"]))
    tmp = tmp_path / ".orig.h5.converting"
    rng = random.Random(0)
    # (when, seconds): after the temporary file appears, or after the start (a leftover present)
    moments = [("tmp", 0.0), ("tmp", rng.uniform(0, 0.005)), ("tmp", rng.uniform(0, 0.03)),
               ("start", rng.uniform(0.5, 3.0))]
    outcomes = []
    for when, delay in moments:
        path.write_bytes(before)
        if when == "tmp":
            tmp.unlink(missing_ok=True)
        else:
            tmp.write_bytes(b"the half-written leftover of a killed conversion")
        proc = subprocess.Popen([sys.executable, "-m", "losslandscape", "directions", str(toml)],
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while when == "tmp" and not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
            pass  # poll as fast as we can: the file exists only for milliseconds
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), err
        if path.read_bytes() == before:
            outcomes.append(("original", tmp.exists()))
        else:
            assert_converted(path, weights_case)
            outcomes.append(("converted", tmp.exists()))
    log.info("SIGKILL outcomes (target, temporary file left): %s", outcomes)
    assert ("original", True) in outcomes  # some kill landed while the conversion was writing
    # a later attempt converts, over whatever a killed one left behind
    path.write_bytes(before)
    tmp.write_bytes(b"the half-written leftover of a killed conversion")
    assert convert(specs.load(toml)).created is True
    assert_converted(path, weights_case)
    assert not tmp.exists()


# --- states directions -------------------------------------------------------------------------

def test_original_states_direction_file_with_num_batches_tracked(trained, tmp_path):
    model = fresh_model(trained["final"])
    dir_file = tmp_path / "states.h5"
    d = write_original_directions(dir_file, model, "states")
    assert any(k.endswith("num_batches_tracked") for k in d["x"])
    grid = ("-0.3:0.3:2", "-0.2:0.2:2")
    xs, ys = axes_of(grid)
    # an original surface along it, its first test point computed, the others -1
    values = original_values(trained["final"], d, xs, ys, {"test": [0]})
    path = tmp_path / "orig.h5"
    write_original_surface(path, str(dir_file), xs, ys, {k: v for k, v in values.items() if k.startswith("test")})
    spec = specs.from_dict(tables(trained["final"], path, dir_file, "states", grid, splits=("test",)))
    assert run_serial(SurfaceWork(spec)) == 0
    with h5py.File(path, "r") as f:
        loss, acc = f["test_loss"][...], f["test_acc"][...]
        stored = f["directions/x"]
        assert "bn1.running_var" in stored and not any("num_batches_tracked" in k for k in stored)
        np.testing.assert_array_equal(stored["bn1.running_var"][...], d["x"]["bn1.running_var"].numpy())
    assert loss[0, 0] == values["test_loss"].flat[0]
    for k in range(4):
        j, i = divmod(k, len(xs))
        ref_loss, ref_acc = plain_pass(moved_model(trained["final"], d, xs[i], ys[j]), "test", SAMPLES)
        assert loss[j, i] == pytest.approx(ref_loss, rel=1e-5)
        assert acc[j, i] == pytest.approx(ref_acc, abs=1e-9)


def test_direction_file_count_mismatch_is_one_line(trained, tmp_path):
    model = fresh_model(trained["final"])
    dir_file = tmp_path / "states.h5"
    write_original_directions(dir_file, model, "states")
    all_names = list(model.state_dict())
    states = {k: tuple(t.shape) for k, t in dirs.target_tensors(model, "states").items()}
    x, y = read_direction_file(str(dir_file), states, True, all_names=all_names)
    assert list(x) == list(states) and len(states) < len(all_names)
    with pytest.raises(UserError, match="dir_type") as err:  # a states file read as weights
        read_direction_file(str(dir_file), {k: tuple(t.shape) for k, t in dirs.target_tensors(model, "weights").items()},
                            True)
    assert "\n" not in str(err.value)
    with h5py.File(dir_file, "r+") as f:
        del f["xdirection"][str(len(all_names) - 1)]
    with pytest.raises(UserError, match=f"holds {len(all_names) - 1} direction entries") as err:
        read_direction_file(str(dir_file), states, True, all_names=all_names)
    assert "\n" not in str(err.value)


# --- points an original file did not have equal plain forward passes ----------------------------

@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_points_not_adopted_from_an_original_file_equal_plain_forward_passes(tmp_path):
    """Strong version of tests/test_original.py::test_adopted_values_stay_and_the_rest_equals_a_fresh_computation,
    which compares the points computed after adoption with another run of the same code. Here
    the original file (written as the original code writes it) is resumed with the `surface`
    verb, and every point it did not have is checked against a plain forward pass of the model
    moved along the original direction file; the adopted points keep the original's values."""
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": build_model("resnet20", in_channels=1).state_dict()}, ckpt)
    d = write_original_directions(tmp_path / "dirs.h5", fresh_model(ckpt), "weights")
    xs, ys = axes_of(GRID)
    computed = {"train": [0, 2, 4], "test": [1, 4]}
    values = original_values(ckpt, d, xs, ys, computed)
    surf = tmp_path / "orig.h5"
    write_original_surface(surf, str(tmp_path / "dirs.h5"), xs, ys, values)
    toml = write_toml(tmp_path / "job.toml", tables(ckpt, surf, tmp_path / "dirs.h5"))
    proc = subprocess.run([str(BIN / "losslandscape"), "surface", str(toml)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "adopted" in proc.stderr, proc.stderr
    n = len(xs) * len(ys)
    with h5py.File(surf, "r") as f:
        got = {k: f[k][...].ravel() for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
        assert f["train_done"][...].all() and f["test_done"][...].all()
    checked = 0
    for split in ("train", "test"):
        for k in range(n):
            if k in computed[split]:  # adopted: the original's values, exactly
                assert got[f"{split}_loss"][k] == values[f"{split}_loss"].flat[k]
                assert got[f"{split}_acc"][k] == values[f"{split}_acc"].flat[k]
                continue
            loss, acc = plain_pass(moved_model(ckpt, d, xs[k % len(xs)], ys[k // len(xs)]), split,
                                   SAMPLES)
            assert got[f"{split}_loss"][k] == pytest.approx(loss, rel=1e-5, abs=0), (split, k)
            assert got[f"{split}_acc"][k] == pytest.approx(acc, abs=1e-9), (split, k)
            checked += 1
    assert checked == 2 * n - 5
