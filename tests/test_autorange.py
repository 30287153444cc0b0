""""auto" axes for random, Hessian and file directions: the range where the loss has grown by
grid.auto_factor, checked on a linear softmax model whose loss along any direction is computed
here independently with numpy (and is convex along a line, so each side has one crossing)."""

from __future__ import annotations

import json
import math
import subprocess

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import BIN, launch, mpirun
from losslandscape.numerics import autorange
from losslandscape import spec as specs
from losslandscape.inputs.data import load_split
from losslandscape.errors import UserError

LINNET = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''
REL_TOL = autorange.REL_TOL


def cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "losslandscape"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# --- the search on one ray, on closed-form losses ----------------------------------------------

@pytest.mark.parametrize("factor", [1.5, 4.0, 10.0, 101.0])
@pytest.mark.parametrize("c", [0.02, 1.0, 7.0])
def test_reach_meets_the_factor_within_rel_tol_of_the_crossing(factor, c):
    calls = []

    def loss(t):
        calls.append(t)
        return c * (1 + t ** 2)

    t, evaluations = autorange.reach(loss, c, factor)
    crossing = math.sqrt(factor - 1)  # c * (1 + t^2) = factor * c
    assert calls[:3] == [0.01, 0.02, 0.04]  # the step doubles from 0.01
    assert loss(t) >= factor * c
    assert crossing <= t <= crossing * (1 + REL_TOL)
    assert evaluations == len(calls) - 1 and evaluations <= 30


def test_reach_on_a_steep_and_a_slow_loss_and_a_narrow_tolerance():
    # exp(t / s): crossing at s * ln(factor), far below and far above the first step of 0.01
    for s in (1e-4, 3.0):
        t, _ = autorange.reach(lambda t: math.exp(t / s), 1.0, 10.0, rel_tol=1e-3)
        assert s * math.log(10) <= t <= s * math.log(10) * (1 + 1e-3)


def test_a_nan_or_infinite_loss_counts_as_grown():
    t, _ = autorange.reach(lambda t: float("nan") if t > 0.3 else 1.0, 1.0, 10.0)
    assert 0.3 < t <= 0.3 * (1 + REL_TOL)
    t, _ = autorange.reach(lambda t: float("inf") if t > 2.0 else 1.0, 1.0, 10.0)
    assert 2.0 < t <= 2.0 * (1 + REL_TOL)


def test_a_loss_that_does_not_grow_is_one_line_naming_the_field():
    with pytest.raises(UserError) as info:
        autorange.reach(lambda t: 0.31 + 0.0021 * t, 0.31, 10.0, axis="y", sign=-1)
    message = str(info.value)
    assert message == ('grid.y: the loss along y did not grow by grid.auto_factor = 10 within |y| <= 100 '
                       '(centre loss 0.31, at -100: 0.52); give "lo:hi:n"')


def test_the_reach_is_rounded_up_to_three_digits():
    assert autorange.round_up(0.38712) == 0.388
    assert autorange.round_up(0.391) == 0.391
    assert autorange.round_up(12.301) == 12.4
    assert autorange.round_up(100.0) == 100.0


class FakeEvaluator:
    """evaluate(a, b) of a known loss surface, counting the points asked for."""

    def __init__(self, loss):
        self.loss, self.calls = loss, []
        self.splits = {"train": (None, torch.zeros(7))}

    def examples(self, split):
        return 7

    def evaluate(self, a, b, splits):
        self.calls.append((a, b))
        return {s: (self.loss(a, b), 50.0) for s in splits}


def test_auto_range_takes_the_farther_side_of_each_axis():
    # along y: 1 + b^2 above the centre, 1 + 9 b^2 below; factor 10 is reached at b = +3 and b = -1
    ev = FakeEvaluator(lambda a, b: 1 + 4 * a * a + (b * b if b > 0 else 9 * b * b))
    r = autorange.auto_range(ev, "train", "y", 10.0)
    assert all(a == 0.0 for a, _ in ev.calls)  # y is searched at x = 0
    assert 3 <= r["plus"] <= 3 * (1 + REL_TOL) and 1 <= r["minus"] <= 1 + REL_TOL
    assert r["reach"] == autorange.round_up(r["plus"]) and r["centre_loss"] == 1.0 and r["samples"] == 7
    assert r["loss_plus"] == 1 + r["reach"] ** 2 and r["loss_minus"] == 1 + 9 * r["reach"] ** 2
    assert r["evaluations"] == len(ev.calls) == len(set(ev.calls))  # each point once
    ev = FakeEvaluator(lambda a, b: 1 + 4 * a * a + b * b)
    r = autorange.auto_range(ev, "train", "x", 10.0)
    assert all(b == 0.0 for _, b in ev.calls) and 1.5 <= r["reach"] <= 1.5 * (1 + REL_TOL) * 1.01
    assert json.loads(json.dumps(r)) == r
    with pytest.raises(UserError, match='grid.x: "auto" needs a positive loss at the centre'):
        autorange.auto_range(FakeEvaluator(lambda a, b: 0.0), "train", "x", 10.0)


# --- the spec ----------------------------------------------------------------------------------

def one_line(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_fields_their_defaults_and_their_checks():
    grid = specs.Grid()
    assert grid.auto_factor == 10.0 and grid.auto_samples == 2048
    for kind, extra in (("random", {}), ("hessian", {}), ("file", {"file": "d.h5"})):
        s = specs.from_dict({"directions": {"kind": kind, **extra}, "grid": {"x": "auto", "y": "auto:7"}})
        assert (s.grid.x, s.grid.y) == ("auto", "auto:7")
    assert one_line(specs.from_dict, {"model": {"checkpoint": "a.pt", "checkpoint2": "b.pt"},
                                      "directions": {"kind": "interpolate"}, "grid": {"x": "auto"}}) == (
        'grid.x: "auto" is not available for directions.kind = "interpolate" (the line between two models); '
        'give "lo:hi:n", e.g. "-0.5:1.5:41"')
    for bad in (1, 0.5, -3, float("inf"), float("nan")):
        assert one_line(specs.from_dict, {"grid": {"auto_factor": bad}}) == (
            f"grid.auto_factor: {float(bad)} is not valid; expected a number > 1")
    assert "grid.auto_samples: -1 is not valid" in one_line(specs.from_dict, {"grid": {"auto_samples": -1}})
    assert "grid.y: 'auto:1' is not valid" in one_line(specs.from_dict, {"grid": {"x": "auto", "y": "auto:1"}})


def test_the_readme_spec_example_is_a_valid_spec():
    import tomllib

    from helpers import REPO

    text = (REPO / "README.md").read_text()
    block = text.split("```toml\n[model]\nname = \"resnet56\"", 1)[1].split("```", 1)[0]
    s = specs.from_dict(tomllib.loads('[model]\nname = "resnet56"' + block))
    assert (s.grid.auto_factor, s.grid.auto_samples) == (10.0, 2048)


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_command_line_lists_and_checks_the_fields(tmp_path):
    help_text = " ".join(cli("surface", "--help").stdout.split())
    assert ("--grid.auto_factor FLOAT auto axes (random, hessian, file directions): step out from the centre until "
            "the loss is auto_factor times the centre's loss. (default: 10.0)") in help_text
    assert "--grid.auto_samples INT images of the first split in data.splits" in help_text
    assert "0 = all. (default: 2048)" in help_text
    for args, line in (
            (["--directions.kind=interpolate", "--grid.x=auto"],
             'grid.x: "auto" is not available for directions.kind = "interpolate"'),
            (["--grid.x=auto", "--grid.auto_factor=1"], "grid.auto_factor: 1.0 is not valid; expected a number > 1")):
        proc = cli("surface", *args, f"--output.surface={tmp_path / 's.h5'}")
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and line in proc.stderr, proc.stderr
    assert not (tmp_path / "s.h5").exists()


# --- end to end on a linear softmax model ------------------------------------------------------

def ce(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray) -> float:
    """Mean cross-entropy of the linear model (W, b) on (X, y), in float64 numpy."""
    z = X @ W.T + b
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def crossing(f, target: float) -> float:
    """The t > 0 where the convex f (f(0) < target) reaches target, to 1e-12 relative."""
    lo, hi = 0.0, 1e-3
    while f(hi) < target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if f(mid) >= target else (mid, hi)
    return hi


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> dict:
    """linnet.py (a linear softmax model) with briefly trained weights, and the digits train split."""
    d = tmp_path_factory.mktemp("linear")
    (d / "linnet.py").write_text(LINNET)
    X, y = load_split(specs.Data(), "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=20)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    torch.save(model.state_dict(), d / "linnet.pt")
    return {"dir": d, "ckpt": d / "linnet.pt", "X": X.reshape(len(y), -1).double().numpy(), "y": y.numpy(),
            "W": model[1].weight.detach().double().numpy(), "b": model[1].bias.detach().double().numpy()}


def job(linear: dict, name: str, x: str, y: str = "", kind: str = "random", **grid) -> tuple:
    d = linear["dir"]
    extra = "".join(f"{k} = {v!r}\n" for k, v in grid.items())
    spec = d / f"{name}.toml"
    spec.write_text(f'''
[model]
name = "linnet:build"
checkpoint = "{linear['ckpt']}"
[data]
name = "digits"
[directions]
kind = "{kind}"
file = "{d / 'dirs.h5'}"
[grid]
x = "{x}"
y = "{y}"
{extra}[evaluation]
device = "cpu"
threads = 1
[output]
surface = "{d / name}.h5"
''')
    return spec, d / f"{name}.h5"


def along(linear: dict, f: h5py.File, axis: str, X=None, y=None):
    """t -> the numpy loss at the centre + t * (the file's direction `axis`)."""
    g = f[f"directions/{axis}"]
    dW, db = (np.asarray(g[k], dtype=np.float64) for k in ("1.weight", "1.bias"))
    X = linear["X"] if X is None else X
    y = linear["y"] if y is None else y
    return lambda t: ce(X, y, linear["W"] + t * dW, linear["b"] + t * db)


def check_axis(record: dict, axis_values: np.ndarray, n: int, loss, factor: float) -> None:
    """The recorded search and the file's axis against the numpy loss along the direction."""
    reach, centre = record["reach"], loss(0.0)
    target = factor * centre
    assert record["factor"] == factor
    assert record["centre_loss"] == pytest.approx(centre, rel=1e-5)
    # each side's search stopped where the loss has grown by the factor, within rel_tol of the crossing
    plus, minus = crossing(loss, target), crossing(lambda t: loss(-t), target)
    assert plus <= record["plus"] * (1 + 1e-6) and record["plus"] <= plus * (1 + REL_TOL)
    assert minus <= record["minus"] * (1 + 1e-6) and record["minus"] <= minus * (1 + REL_TOL)
    # the axis is -reach..reach with n points, both ends meet the factor, and it is not too wide
    np.testing.assert_array_equal(axis_values, np.linspace(-reach, reach, n))
    assert loss(reach) >= target and loss(-reach) >= target
    assert min(loss(reach / (1 + 2 * REL_TOL)), loss(-reach / (1 + 2 * REL_TOL))) < target
    assert record["loss_plus"] == pytest.approx(loss(reach), rel=1e-5)
    assert record["loss_minus"] == pytest.approx(loss(-reach), rel=1e-5)
    assert record["evaluations"] >= 5 and record["reach"] == autorange.round_up(max(record["plus"],
                                                                                        record["minus"]))


@pytest.fixture(scope="module")
def random_surface(linear) -> dict:
    """A random-direction surface with x = "auto:11" and y = "auto:5" (default factor), one process."""
    spec, path = job(linear, "rand", "auto:11", "auto:5", auto_samples=0)
    proc = cli("surface", spec)
    assert proc.returncode == 0, proc.stderr
    return {"spec": spec, "path": path, "stderr": proc.stderr}


def test_random_auto_axes_meet_the_factor_on_both_sides(linear, random_surface):
    with h5py.File(random_surface["path"], "r") as f:
        records = json.loads(f.attrs["auto_range"])
        stored = json.loads(f.attrs["spec"])["grid"]
        assert set(records) == {"x", "y"}
        for axis, name, n in (("x", "xcoordinates", 11), ("y", "ycoordinates", 5)):
            r = records[axis]
            assert r["split"] == "train" and r["samples"] == len(linear["y"]) == 1438  # auto_samples = 0: all
            check_axis(r, f[name][...], n, along(linear, f, axis), 10.0)
            assert stored[axis] == f"{-r['reach']!r}:{r['reach']!r}:{n}"
            line = (f"grid.{axis} = auto:{n}: {stored[axis]} (train loss {r['centre_loss']:.4g} at the centre grows "
                    f"by auto_factor 10 at {axis} = +{r['plus']:.3g} / -{r['minus']:.3g}; {r['evaluations']} "
                    f"evaluations of 1438 samples, ")
            assert line in random_surface["stderr"]
        # the surface engine's own values at the ends of x (y = 0 is the middle row) are the numpy ones
        loss_x, mid = along(linear, f, "x"), 2
        r = records["x"]
        assert f["train_loss"][mid, 0] == pytest.approx(loss_x(-r["reach"]), rel=1e-5)
        assert f["train_loss"][mid, -1] == pytest.approx(loss_x(r["reach"]), rel=1e-5)
        assert f["train_done"][...].all()
    assert stored["auto_factor"] == 10.0
    print("random:", {a: {k: records[a][k] for k in ("reach", "plus", "minus", "evaluations", "seconds")}
                      for a in records})


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_a_resume_with_auto_takes_the_files_grid_and_computes_nothing(linear, random_surface):
    path = random_surface["path"]
    before = path.read_bytes()
    again = cli("surface", random_surface["spec"], "--grid.auto_factor=3", "--grid.auto_samples=100")
    assert again.returncode == 0, again.stderr
    assert "55 of 55 points done (train), 0 to compute" in again.stderr
    assert "grid.x = auto" not in again.stderr  # no new search
    assert path.read_bytes() == before
    with h5py.File(path, "r") as f:
        x = f["xcoordinates"][...]
    other = cli("surface", random_surface["spec"], f"--grid.x={-2 * float(x[-1])!r}:{2 * float(x[-1])!r}:11")
    assert other.returncode == 1 and "grid.x: the surface file" in other.stderr


@pytest.mark.slow
def test_mpirun_chooses_the_same_range_and_values(linear, random_surface):
    spec, path = job(linear, "rand_mpi", "auto:11", "auto:5", auto_samples=0)
    proc = launch(mpirun(3) + [str(BIN / "losslandscape"), "surface", str(spec)])
    assert proc.returncode == 0, proc.stderr
    assert "grid.x = auto:11: " in proc.stderr
    with h5py.File(random_surface["path"], "r") as a, h5py.File(path, "r") as b:
        for name in ("xcoordinates", "ycoordinates"):
            np.testing.assert_array_equal(a[name][...], b[name][...])
        assert json.loads(a.attrs["spec"])["grid"] == json.loads(b.attrs["spec"])["grid"]
        assert b["train_done"][...].all()
        np.testing.assert_allclose(a["train_loss"][...], b["train_loss"][...], rtol=1e-6)
        np.testing.assert_allclose(a["train_acc"][...], b["train_acc"][...], rtol=1e-6)


def test_the_search_runs_on_the_cpu_whatever_the_device(linear):
    from losslandscape.run.work import auto_search_evaluator

    spec, _ = job(linear, "cpu", "auto", auto_samples=100)
    s = specs.load(spec, {"evaluation.device": "cuda:0"})
    evaluator = auto_search_evaluator(s)
    assert evaluator.device.type == "cpu" and list(evaluator.splits) == ["train"]
    assert len(evaluator.splits["train"][1]) == 100


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_hessian_auto_axis_on_a_subsample(linear):
    spec, path = job(linear, "hess", "auto", kind="hessian", auto_factor=5.0, auto_samples=200)
    proc = cli("surface", spec)
    assert proc.returncode == 0, proc.stderr
    keep = np.arange(200) * 1438 // 200  # evenly spaced over the train split
    with h5py.File(path, "r") as f:
        r = json.loads(f.attrs["auto_range"])["x"]
        assert r["samples"] == 200 and r["split"] == "train"
        check_axis(r, f["xcoordinates"][...], 21, along(linear, f, "x", linear["X"][keep], linear["y"][keep]), 5.0)
        # the surface itself is over the whole split
        full = along(linear, f, "x")
        assert f["train_loss"][0] == pytest.approx(full(-r["reach"]), rel=1e-5)
        assert f["train_loss"][10] == pytest.approx(full(0.0), rel=1e-5)
    assert "evaluations of 200 samples" in proc.stderr
    print("hessian:", {k: r[k] for k in ("reach", "plus", "minus", "evaluations", "seconds")})


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_file_directions_and_a_direction_the_loss_ignores(linear):
    """x: a fixed direction; y: the same vector added to every class's weights and bias, which the
    softmax does not see (the loss is flat along it), so "auto" cannot resolve y."""
    rng = np.random.default_rng(1)
    with h5py.File(linear["dir"] / "dirs.h5", "w") as f:  # the original code's direction-file layout
        f["xdirection/0"] = (0.3 * rng.standard_normal((10, 64))).astype(np.float32)
        f["xdirection/1"] = np.zeros(10, dtype=np.float32)
        f["ydirection/0"] = np.tile(rng.standard_normal(64), (10, 1)).astype(np.float32)
        f["ydirection/1"] = np.full(10, 0.5, dtype=np.float32)
    spec, path = job(linear, "file", "auto:5", "auto:3", kind="file", auto_samples=0)
    flat = cli("surface", spec)
    assert flat.returncode == 1 and not path.exists()
    line = flat.stderr.splitlines()[-1]
    assert line.startswith("losslandscape: error: grid.y: the loss along y did not grow by grid.auto_factor = 10 "
                           "within |y| <= 100 (centre loss "), flat.stderr
    assert line.endswith('; give "lo:hi:n"') and "Traceback" not in flat.stderr
    proc = cli("surface", spec, "--grid.y=-1:1:3")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(path, "r") as f:
        records = json.loads(f.attrs["auto_range"])
        assert set(records) == {"x"}
        check_axis(records["x"], f["xcoordinates"][...], 5, along(linear, f, "x"), 10.0)
        np.testing.assert_allclose(f["train_loss"][:, 2], f["train_loss"][1, 2], rtol=1e-4)  # flat along y
