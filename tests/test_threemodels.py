"""The plane through three models (model.checkpoint3, the original --model_file3), the same
direction on both axes (directions.same_dir, the original --same_dir), and a resume that takes
the SHA-256 of unchanged checkpoints from the surface file instead of reading them again.

Values are checked against plain forward passes of models whose weights are set here by hand
(theta1 + a (theta2 - theta1) + b (theta3 - theta1); theta + (a + b) d), and against each
checkpoint loaded on its own.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape.surfacefile import format as ff
from losslandscape.run import work
from losslandscape.run import makedirections
from losslandscape import spec as specs
from losslandscape.run.driver import run_serial
from losslandscape.errors import UserError
from losslandscape.run.work import SurfaceWork, prepare

from helpers import assert_one_line_error, losslandscape

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(4 * width, 10)

    def forward(self, x):
        return self.head(self.features(x))


def build():
    return Net()


def seeded(seed):
    """Three different 'trained' models: own weights and BatchNorm statistics per seed."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.3, 0.3)
        net.features[1].running_var.uniform_(0.5, 1.5)
        net.features[1].weight.uniform_(0.5, 1.5)
    return net


def wide():
    return Net(width=6)
'''
SAMPLES = 120


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """(folder, module, [model1.pt, model2.pt, model3.pt]): a tiny net with BatchNorm, importable
    as <module>:build, and three checkpoints of it from seeds 0, 1, 2."""
    folder = tmp_path_factory.mktemp("three")
    name = f"threenet_{folder.name.replace('-', '_')}"
    (folder / f"{name}.py").write_text(NET)
    sys.path.insert(0, str(folder))
    module = importlib.import_module(name)
    paths = []
    for k in range(3):
        paths.append(folder / f"model{k + 1}.pt")
        torch.save(module.seeded(k).state_dict(), paths[-1])
    yield folder, module, paths
    sys.path.remove(str(folder))
    sys.modules.pop(name, None)


def make_spec(three, out: Path, **tables) -> specs.Spec:
    _, module, (m1, m2, m3) = three
    table = {
        "model": {"name": f"{module.__name__}:build", "checkpoint": str(m1), "checkpoint2": str(m2),
                  "checkpoint3": str(m3)},
        "data": {"name": "digits", "splits": ["train"], "max_samples": SAMPLES},
        "directions": {"kind": "interpolate"},
        "grid": {"x": "0:1:3", "y": "-0.5:1:4"},
        "evaluation": {"device": "cpu"},
        "output": {"surface": str(out)},
    }
    for key, values in tables.items():
        table.setdefault(key, {}).update(values)
    return specs.from_dict(table)


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def plain_loss(module, weights: dict[str, torch.Tensor]) -> float:
    """Mean cross-entropy of one forward pass of a fresh model with `weights`, over the split at once."""
    model = module.build()
    model.load_state_dict(weights)
    x, y = datasets._load("digits", "", "train", SAMPLES, 0)
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x).double(), y).item()


def stored(path: Path):
    """(x direction, y direction, identity, xcoordinates, ycoordinates, train_loss) of a file."""
    with h5py.File(path, "r") as f:
        g = f["directions"]
        x = {k: torch.from_numpy(g["x"][k][...]) for k in g["x"]}
        y = {k: torch.from_numpy(g["y"][k][...]) for k in g["y"]}
        return (x, y, json.loads(f.attrs[ff.A_IDENTITY]), f["xcoordinates"][...], f["ycoordinates"][...],
                f["train_loss"][...])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the plane through three models --------------------------------------------------------

def test_plane_through_three_models_is_plain_forward_passes(three, tmp_path, caplog):
    _, module, (m1, m2, m3) = three
    spec = make_spec(three, tmp_path / "plane.h5")
    assert spec.directions.dir_type == "states"
    with caplog.at_level("INFO"):
        assert run_serial(SurfaceWork(spec)) == 0
    assert "interpolation train y = 1: loss" in caplog.text and "model.checkpoint3 itself: loss" in caplog.text
    assert "is not the third model" not in caplog.text and "is not the second model" not in caplog.text
    x, y, ident, xs, ys, loss = stored(tmp_path / "plane.h5")
    t1, t2, t3 = state(m1), state(m2), state(m3)
    floats = {k for k, v in t1.items() if v.is_floating_point()}
    assert set(x) == set(y) == floats  # BatchNorm statistics move too (dir_type "states")
    for k in floats:
        torch.testing.assert_close(x[k], t2[k] - t1[k])
        torch.testing.assert_close(y[k], t3[k] - t1[k])
    assert ident["model.checkpoint3 (sha256)"] == sha(m3) and ident["model.checkpoint2 (sha256)"] == sha(m2)
    assert not np.isnan(loss).any()
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            moved = {k: t1[k] + a * (t2[k] - t1[k]) + b * (t3[k] - t1[k]) if k in floats else t1[k] for k in t1}
            assert loss[j, i] == pytest.approx(plain_loss(module, moved), rel=1e-5), (a, b)
    # the corners are the models themselves, each loaded on its own
    assert (xs[2], ys[1]) == (1.0, 0.0) and (xs[0], ys[3]) == (0.0, 1.0) and (xs[0], ys[1]) == (0.0, 0.0)
    for (j, i), ckpt in (((1, 0), m1), ((1, 2), m2), ((3, 0), m3)):
        assert loss[j, i] == pytest.approx(plain_loss(module, state(ckpt)), rel=1e-5)


def test_python_interface_takes_the_third_model(three, tmp_path):
    import losslandscape as ll

    _, module, (m1, m2, m3) = three
    models = []
    for path in (m1, m2, m3):
        models.append(module.build())
        models[-1].load_state_dict(state(path))
    x, y = datasets._load("digits", "", "train", SAMPLES, 0)
    s = ll.interpolate(models[0], models[1], train=(x, y), model_c=models[2], x="0:1:2", y="0:1:2",
                       out=tmp_path / "api.h5", device="cpu")
    for (j, i), path in (((0, 0), m1), ((0, 1), m2), ((1, 0), m3)):
        assert s.train_loss[j, i] == pytest.approx(plain_loss(module, state(path)), rel=1e-5)


# --- the same direction on both axes --------------------------------------------------------

def test_same_dir_random_uses_the_x_direction_on_both_axes(three, tmp_path):
    _, module, (m1, _, _) = three
    common = {"model": {"checkpoint2": "", "checkpoint3": ""}, "grid": {"x": "-1:1:3", "y": "-1:1:3"}}
    random = {"kind": "random", "seed": 3}
    spec = make_spec(three, tmp_path / "same.h5", directions={**random, "same_dir": True}, **common)
    assert run_serial(SurfaceWork(spec)) == 0
    x, y, ident, xs, ys, loss = stored(tmp_path / "same.h5")
    assert ident["directions.same_dir"] is True
    for k in x:
        assert torch.equal(x[k], y[k]), k
    # the x direction is the one the same seed gives without same_dir (the first normalised one)
    prepare(make_spec(three, tmp_path / "plain.h5", directions=random, **common))
    x0, y0, ident0, *_ = stored(tmp_path / "plain.h5")
    assert "directions.same_dir" not in ident0  # default: not recorded (older files resume)
    assert all(torch.equal(x[k], x0[k]) for k in x) and any(not torch.equal(x[k], y0[k]) for k in x)
    t1 = state(m1)
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            moved = {k: t1[k] + (a + b) * x[k] if k in x else t1[k] for k in t1}
            assert loss[j, i] == pytest.approx(plain_loss(module, moved), rel=1e-5), (a, b)
    assert loss[0, 2] == pytest.approx(loss[1, 1], rel=1e-6)  # (1, -1) is the centre
    # a resume that drops same_dir is refused in one line naming it
    with pytest.raises(UserError, match=r"^directions.same_dir: the surface file .* was made with True"):
        work.plan(make_spec(three, tmp_path / "same.h5", directions=random, **common))


def test_same_dir_interpolation_puts_the_second_model_on_both_axes(three, tmp_path):
    _, module, (m1, m2, _) = three
    spec = make_spec(three, tmp_path / "diag.h5", model={"checkpoint3": ""}, directions={"same_dir": True},
                     grid={"x": "0:1:2", "y": "0:1:2"})
    assert run_serial(SurfaceWork(spec)) == 0
    x, y, _, _, _, loss = stored(tmp_path / "diag.h5")
    t1, t2 = state(m1), state(m2)
    for k in x:
        torch.testing.assert_close(y[k], t2[k] - t1[k])
    own2 = plain_loss(module, t2)
    assert loss[0, 1] == pytest.approx(own2, rel=1e-5) and loss[1, 0] == pytest.approx(own2, rel=1e-5)
    far = {k: t1[k] + 2 * (t2[k] - t1[k]) if k in x else t1[k] for k in t1}
    assert loss[1, 1] == pytest.approx(plain_loss(module, far), rel=1e-5)


def test_same_dir_from_a_one_direction_file(three, tmp_path):
    """kind "file": a file with an x direction only (a 1-D surface) gives both axes."""
    no_ends = {"checkpoint2": "", "checkpoint3": ""}
    prepare(make_spec(three, tmp_path / "line.h5", model=no_ends, directions={"kind": "random", "seed": 5},
                      grid={"x": "-1:1:3", "y": ""}))
    with h5py.File(tmp_path / "line.h5", "r") as f:
        assert "y" not in f["directions"]
        line = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
    prepare(make_spec(three, tmp_path / "both.h5", model=no_ends, grid={"x": "-1:1:3", "y": "-1:1:3"},
                      directions={"kind": "file", "file": str(tmp_path / "line.h5"), "same_dir": True}))
    x, y, *_ = stored(tmp_path / "both.h5")
    assert set(x) == set(line) and all(torch.equal(x[k], line[k]) and torch.equal(y[k], line[k]) for k in line)


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (["--directions.kind=random"], ["model.checkpoint3:", 'only with directions.kind = "interpolate"']),
    (["--grid.y="], ["grid.y: empty; model.checkpoint3"]),
    (["--model.checkpoint3="], ["grid.y:", "1-D line unless model.checkpoint3"]),
    (["--directions.same_dir=true"], ["directions.same_dir:", "model.checkpoint3 gives the y direction"]),
    (["--directions.kind=random", "--model.checkpoint3=", "--directions.same_dir=true", "--grid.y="],
     ["directions.same_dir: a 1-D curve has no y axis"]),
    (["--directions.kind=random", "--model.checkpoint3=", "--directions.same_dir=true",
      "--directions.orthogonal=true"], ["directions.same_dir:", "orthogonal"]),
    (["--directions.kind=pca", "--directions.checkpoints=model*.pt", "--model.checkpoint3=",
      "--directions.same_dir=true"], ["directions.same_dir:", "pca"]),
    (["--model.checkpoint3=missing.pt"], ["model.checkpoint3", "missing.pt"]),
    (["--model.checkpoint3=wide.pt"], ["model.checkpoint3: does not fit the model: wrong shape"]),
])
def test_mistakes_are_one_line(three, tmp_path, overrides, words):
    folder, module, (m1, m2, m3) = three
    torch.save(module.wide().state_dict(), folder / "wide.pt")  # another architecture
    job = folder / "job.toml"
    job.write_text(f"""
[model]
name = "{module.__name__}:build"
checkpoint = "model1.pt"
checkpoint2 = "model2.pt"
checkpoint3 = "model3.pt"
[data]
name = "digits"
max_samples = {SAMPLES}
[directions]
kind = "interpolate"
[grid]
x = "0:1:2"
y = "0:1:2"
[evaluation]
device = "cpu"
[output]
surface = "{tmp_path / 'refused.h5'}"
""")
    result = losslandscape("surface", job, *overrides, cwd=folder)
    # a checkpoint3 of another architecture is found when the directions are made, after the
    # run's progress lines: the error is still one line, and the file is not made
    result.stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                            if not re.match(r"\d\d:\d\d:\d\d INFO ", line))
    assert_one_line_error(result, *words)
    assert not (tmp_path / "refused.h5").exists()


# --- identity and resume -------------------------------------------------------------------

class CountedHashes:
    """The real file_sha256, with the paths it reads counted; a fresh process's empty cache."""

    def __init__(self, monkeypatch):
        self.paths: list[Path] = []
        real = makedirections.file_sha256
        monkeypatch.setattr(makedirections, "file_sha256", lambda p, field: self.paths.append(Path(p)) or real(p, field))
        self.forget()

    def forget(self) -> None:
        makedirections._HASHED.clear()
        self.paths.clear()


def test_resume_takes_unchanged_checkpoints_hashes_from_the_file(three, tmp_path, monkeypatch):
    folder, module, (m1, m2, m3) = three
    ckpts = [tmp_path / p.name for p in (m1, m2, m3)]  # copies this test may change
    for path, copy in zip((m1, m2, m3), ckpts):
        copy.write_bytes(path.read_bytes())
    spec = make_spec((folder, module, ckpts), tmp_path / "r.h5", grid={"x": "0:1:2", "y": "0:1:2"})
    counted = CountedHashes(monkeypatch)
    prepare(spec)
    assert sorted(counted.paths) == sorted(ckpts)  # each hashed once when the file is made
    with h5py.File(tmp_path / "r.h5", "r") as f:
        record = json.loads(f.attrs[ff.A_FILE_HASHES])
    assert record == {str(p.resolve()): {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns, "sha256": sha(p)}
                      for p in ckpts}

    counted.forget()  # as a new process would start
    assert isinstance(work.plan(spec), work.Resume)
    assert counted.paths == []  # nothing read to hash

    counted.forget()  # touched: the same bytes, read again, accepted
    st = ckpts[1].stat()
    os.utime(ckpts[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert isinstance(work.plan(spec), work.Resume)
    assert counted.paths == [ckpts[1]]

    counted.forget()  # a file written before the record: every checkpoint hashed, as before
    with h5py.File(tmp_path / "r.h5", "r+") as f:
        del f.attrs[ff.A_FILE_HASHES]
    assert isinstance(work.plan(spec), work.Resume)
    assert sorted(counted.paths) == sorted(ckpts)


def test_resume_with_another_third_model_is_refused(three, tmp_path, monkeypatch):
    folder, module, (m1, m2, m3) = three
    ckpts = [m1, m2, tmp_path / "model3.pt"]
    ckpts[2].write_bytes(m3.read_bytes())
    spec = make_spec((folder, module, ckpts), tmp_path / "r.h5", grid={"x": "0:1:2", "y": "0:1:2"})
    prepare(spec)
    before = (tmp_path / "r.h5").read_bytes()
    counted = CountedHashes(monkeypatch)
    torch.save(module.seeded(7).state_dict(), ckpts[2])  # same size, other weights
    with pytest.raises(UserError, match=r"^model.checkpoint3 \(sha256\): the surface file .* was made with") as err:
        work.plan(spec)
    assert "\n" not in str(err.value) and counted.paths == [ckpts[2]]
    assert (tmp_path / "r.h5").read_bytes() == before
