"""A surface file without accuracy: a loss that defines none (a regression, a language model's
own loss, a user's loss that counts nothing correct) writes no `_acc` datasets, and summary,
status, every render, the Python interface, shards and merge handle their absence.

The files are made through the real creation path (work.plan -> make -> create ->
prepare, with the run's notes naming its values) around a freshly initialised resnet20, and
their points written by the real PointWriter; the loss is the paraboloid x^2 + 2 y^2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from losslandscape.frontends import api
from losslandscape.run import work
from losslandscape.surfacefile import write as surface
from losslandscape.surfacefile import format as ff
from losslandscape import spec as specs
from losslandscape.errors import UserError
from losslandscape.numerics.grid import assign_tasks
from losslandscape.render import load_surface, render, summarize
from losslandscape.render import cli as render_cli
from losslandscape.render.summary import format_summary
from losslandscape.run.slurm import merge
from losslandscape.run.status import format_status, status

LOSS_ONLY = {ff.A_VALUES: json.dumps(["loss"])}
BOTH = {ff.A_VALUES: json.dumps(["loss", "acc"])}
SPLITS = ["train", "test"]


def make_spec(folder: Path, y: str = "-1:1:5", name: str = "surf.h5") -> specs.Spec:
    return specs.from_dict({
        "model": {"name": "resnet20", "checkpoint": ""},  # a fresh initialisation: no training needed
        "data": {"name": "digits", "splits": SPLITS, "max_samples": 50},
        "grid": {"x": "-1:1:7", "y": y},
        "evaluation": {"device": "cpu", "unit_size": 4},
        "output": {"surface": str(folder / name)},
    })


def create_file(spec: specs.Spec, notes: dict[str, str]) -> surface.Prepared:
    """A new surface file through the run's own steps, with the run's notes."""
    made = work.make(work.plan(spec))
    made.write(notes)
    return surface.prepare(Path(spec.output.surface), SPLITS, True, notes)


def loss_at(prep: surface.Prepared, p: int, split: str) -> float:
    """The paraboloid at flat point p; the test split 10% higher."""
    shape = prep.axes.shape
    idx = np.unravel_index(p, shape)
    x = prep.axes.x[idx[-1]]
    y = prep.axes.y[idx[0]] if prep.axes.y is not None else 0.0
    return (x**2 + 2 * y**2 + 0.1) * (1.1 if split == "test" else 1.0)


def write_points(path: Path, prep: surface.Prepared, points, acc: float = math.nan,
                 diverged: tuple[int, ...] = ()) -> None:
    """Points written as a run writes them: (loss, acc) per split, acc NaN where the loss defines none."""
    points = [int(p) for p in points]
    results = [{s: (math.inf if p in diverged else loss_at(prep, p, s), acc) for s in SPLITS} for p in points]
    unit = SimpleNamespace(points=points, results=results, seconds=[0.01] * len(points))
    with ff.open_h5(path, "r+") as f:
        surface.PointWriter(f).write(unit)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def loss_only(tmp_path_factory) -> dict[str, Path]:
    """Complete files without accuracy: a 2-D one (7 x 5) and a 1-D one (7 points)."""
    d = tmp_path_factory.mktemp("lossonly")
    out = {}
    for key, y in (("2d", "-1:1:5"), ("1d", "")):
        spec = make_spec(d / key, y)
        prep = create_file(spec, LOSS_ONLY)
        write_points(prep.path, prep, prep.pending)
        out[key] = prep.path
    return out


# ---------------------------------------------------------------- the file


def test_a_loss_without_accuracy_writes_no_acc_datasets(loss_only):
    with h5py.File(loss_only["2d"], "r") as f:
        assert ff.file_values(f) == ("loss",)
        assert json.loads(f.attrs[ff.A_VALUES]) == ["loss"]
        assert "train_acc" not in f and "test_acc" not in f
        assert f["train_loss"].shape == (5, 7) and np.asarray(f["train_done"]).all()
        X, Y = np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, 5))
        np.testing.assert_allclose(f["train_loss"][...], X**2 + 2 * Y**2 + 0.1)
        surface.check_structure(f, loss_only["2d"])  # complete without accuracy


def test_a_file_without_the_attribute_holds_both(tmp_path):
    prep = create_file(make_spec(tmp_path), {})  # what every file before the attribute looks like
    with h5py.File(prep.path, "r") as f:
        assert ff.A_VALUES not in f.attrs
        assert ff.file_values(f) == ("loss", "acc")
        assert {"train_acc", "test_acc"} <= set(f)
    with pytest.raises(UserError, match="attribute values"):
        ff.parse_values('["acc"]')


# ---------------------------------------------------------------- summary and status


def test_summary_prints_loss_only(loss_only, capsys):
    result = summarize(loss_only["2d"])
    for split in SPLITS:
        s = result["splits"][split]
        assert "acc" not in s["centre"] and "acc" not in s["minimum"]
        assert s["centre"]["loss"] == pytest.approx(0.1 * (1.1 if split == "test" else 1.0))
    assert "\"acc\"" not in json.dumps(result)
    render_cli.run_summary(argparse.Namespace(surface=str(loss_only["2d"]), json=False, threshold=1.0))
    text = capsys.readouterr().out
    assert "loss 0.1" in text and "acc" not in text and "nan" not in text.lower()
    assert "acc" not in format_summary(summarize(loss_only["1d"]))


def test_status_says_loss_only(loss_only):
    report = status(loss_only["2d"])
    assert report["values"] == ["loss"] and report["remaining"] == 0
    assert "loss only" in format_status(report).splitlines()[0]


# ---------------------------------------------------------------- every render


def _texts(fig) -> list[str]:
    """Every text of a matplotlib figure: titles, axis labels, legends, colour-bar labels."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text)]


def page_figure(path: Path) -> str:
    """The data and layout of an HTML page's Plotly.newPlot call, as JSON text."""
    text = path.read_text()
    (call,) = re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text)
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(text, call.end())
    layout, _ = decoder.raw_decode(text, re.compile(r",\s*").match(text, end).end())
    return json.dumps({"data": data, "layout": layout})


def test_every_2d_view_draws_the_loss_alone(loss_only, tmp_path):
    figures = {}
    kinds = ["contour", "filled", "heatmap", "surface3d", "vtp", "html"]
    written = render([loss_only["2d"]], tmp_path, kinds=kinds, figures=figures)
    names = sorted(p.name for p in written)
    assert names and not [n for n in names if "acc" in n]
    assert {"surf_train_loss_contour.png", "surf_test_loss_heatmap.png", "surf_train_loss.vtp",
            "surf.html"} <= set(names)
    for path, fig in figures.items():
        texts = " ".join(_texts(fig))
        assert "accuracy" not in texts and "nan" not in texts.lower(), path
    for vtp in tmp_path.glob("*.vtp"):
        assert "nan" not in vtp.read_text().lower()
    figure = page_figure(tmp_path / "surf.html")
    assert "_acc" not in figure and "accuracy" not in figure and "NaN" not in figure
    assert "train loss" in figure


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_default_render_and_the_cli(loss_only, tmp_path, capsys):
    written = render([loss_only["2d"]], tmp_path / "all")
    assert written and not [p for p in written if "acc" in p.name]
    args = argparse.Namespace(surfaces=[str(loss_only["1d"])], kinds=None, split=None, value=None,
                              out=tmp_path / "cli", fmt="svg", vmin=None, vmax=None, levels=None, log=None,
                              zmax=None)
    assert render_cli.run_render(args) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["surf_curve.svg", "surf.html"]  # every file gets its page (#30)


def test_1d_curve_and_page_have_no_accuracy_axis(loss_only, tmp_path):
    figures = {}
    written = render([loss_only["1d"]], tmp_path, kinds=["curve", "html"], figures=figures)
    assert sorted(p.name for p in written) == ["surf.html", "surf_curve.png"]
    (fig,) = figures.values()
    assert len(fig.axes) == 1  # no twin accuracy axis
    assert fig.axes[0].get_ylabel() == "loss"
    assert "accuracy" not in " ".join(_texts(fig))
    assert [line.get_label() for line in fig.axes[0].lines] == ["train loss", "test loss"]
    figure = page_figure(tmp_path / "surf.html")
    assert "accuracy" not in figure and "NaN" not in figure and "test loss" in figure


@pytest.mark.parametrize("kind", ["contour", "heatmap", "surface3d", "vtp", "html"])
def test_an_accuracy_view_is_one_user_error(loss_only, tmp_path, kind):
    with pytest.raises(UserError) as err:
        render([loss_only["2d"]], tmp_path, kinds=[kind], value="acc")
    assert "\n" not in str(err.value) and "holds no accuracy" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_compare_with_a_file_without_accuracy(loss_only, tmp_path):
    other = make_spec(tmp_path / "b")
    prep = create_file(other, BOTH)
    write_points(prep.path, prep, prep.pending, acc=90.0)
    written = render([loss_only["2d"], prep.path], tmp_path / "out", kinds=["compare", "html"])
    assert written and not [p for p in written if "acc" in p.name]
    with pytest.raises(UserError, match="holds no accuracy"):
        render([prep.path, loss_only["2d"]], tmp_path / "out2", kinds=["compare"], value="acc")


# ---------------------------------------------------------------- the Python interface


def test_python_interface_returns_no_accuracy(loss_only):
    s = api.open_surface(loss_only["2d"])
    assert not s.has_accuracy and s.held_values == ["loss"]
    assert s.train_acc is None and s.test_acc is None
    assert set(s.values) == {"train_loss", "test_loss"}
    assert np.isfinite(s.train_loss).all()
    fig = api.plot(s, kind="contour")
    assert "accuracy" not in " ".join(_texts(fig))
    curve = api.plot(loss_only["1d"], kind="curve")
    assert len(curve.axes) == 1
    with pytest.raises(UserError, match="value acc: .* holds no accuracy"):
        api.plot(s, kind="heatmap", value="acc")


def test_a_file_with_accuracy_keeps_it(tmp_path):
    prep = create_file(make_spec(tmp_path), {})
    write_points(prep.path, prep, prep.pending, acc=75.0)
    s = api.open_surface(prep.path)
    assert s.has_accuracy and s.held_values == ["loss", "acc"]
    assert (s.train_acc == 75.0).all()
    assert summarize(prep.path)["splits"]["train"]["centre"]["acc"] == 75.0


# ---------------------------------------------------------------- shards and merge


def test_shards_without_accuracy_merge(tmp_path):
    spec = make_spec(tmp_path)
    prep = create_file(spec, LOSS_ONLY)
    d = ff.shard_dir(prep.path)
    d.mkdir()
    shards = []
    for k, share in enumerate(assign_tasks(prep.pending, 2, spec.evaluation.unit_size)):
        shards.append(d / f"task_{k}.h5")
        surface.create_shard(shards[-1], prep.path, share, k, 2, spec.to_json(), [])
    for path in shards:
        with h5py.File(path, "r") as f:
            assert ff.file_values(f) == ("loss",) and "train_acc" not in f
        task = surface.read_shard(path, SPLITS)
        assert task.values == ("loss",)
        surface.announce_shard(task, LOSS_ONLY)
        with pytest.raises(UserError, match="evaluation.loss: .* loss only"):
            surface.announce_shard(task, BOTH)
        diverged = (int(task.pending[0]),)  # a diverged loss counts: no accuracy to vouch for it
        write_points(path, prep, task.pending, diverged=diverged)
    assert merge(prep.path, force=True) == 35
    with h5py.File(prep.path, "r") as f:
        assert np.asarray(f["train_done"]).all() and np.asarray(f["test_done"]).all()
        assert "train_acc" not in f
        assert int(np.isposinf(f["train_loss"][...]).sum()) == 2
    assert merge(prep.path, force=True) == 0
    s = load_surface(prep.path)
    assert s.fraction_done == {"train": 1.0, "test": 1.0}


def test_shards_with_accuracy_merge_as_before(tmp_path):
    """Both splits, accuracy in the shard: a point flagged done without its accuracy is skipped."""
    spec = make_spec(tmp_path)
    prep = create_file(spec, {})
    d = ff.shard_dir(prep.path)
    d.mkdir()
    shard = d / "task_0.h5"
    surface.create_shard(shard, prep.path, prep.pending, 0, 1, spec.to_json(), [])
    write_points(shard, prep, prep.pending[:-1], acc=80.0)
    write_points(shard, prep, prep.pending[-1:])  # done, but its accuracy missing
    assert merge(prep.path, force=True) == 34
    s = load_surface(prep.path)
    assert s.has_accuracy and np.nanmin(s.train_acc) == 80.0 and np.isnan(s.test_acc).sum() == 1


def test_a_shard_of_other_values_is_refused_by_merge(tmp_path):
    spec = make_spec(tmp_path)
    prep = create_file(spec, LOSS_ONLY)
    d = ff.shard_dir(prep.path)
    d.mkdir()
    shard = d / "task_0.h5"
    surface.create_shard(shard, prep.path, prep.pending, 0, 1, spec.to_json(), [])
    with h5py.File(shard, "r+") as f:
        f.attrs[ff.A_VALUES] = json.dumps(["loss", "acc"])
    with pytest.raises(UserError, match="values"):
        merge(prep.path, force=True)


# ---------------------------------------------------------------- resume


def test_a_resume_whose_values_differ_is_refused(loss_only, tmp_path):
    path = loss_only["2d"]
    before = sha(path)
    with pytest.raises(UserError) as err:
        surface.prepare(path, SPLITS, False, {**BOTH, "batchnorm_folding": ""})
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("evaluation.loss: the surface file")
    assert "loss only (no accuracy)" in str(err.value) and "loss and accuracy" in str(err.value)
    assert sha(path) == before
    assert surface.prepare(path, SPLITS, False, LOSS_ONLY).values == ("loss",)  # the same values resume

    old = create_file(make_spec(tmp_path), {}).path  # a file without the attribute has accuracy
    with pytest.raises(UserError, match="holds loss and accuracy, this run's loss gives loss only"):
        surface.prepare(old, SPLITS, False, LOSS_ONLY)
    assert surface.prepare(old, SPLITS, False, BOTH).values == ("loss", "acc")


def test_python_interface_keeps_a_regressions_float_targets():
    import torch

    x, y = torch.zeros(4, 3, dtype=torch.float64), torch.tensor([0.5, 1.5, 2.0, -1.0])
    assert api._tensors("train", (x, y), "mypkg.losses:huber")[1].dtype == torch.float32
    assert api._tensors("train", (x, y), "model")[1].dtype == torch.float32
    inputs, labels = api._tensors("train", (x, torch.tensor([0.0, 1.0, 2.0, 1.0])), "cross_entropy")
    # dtypes kept as a Dataset's are: one rule (test_data_dtypes.py), cross_entropy refuses float labels
    assert inputs.dtype == torch.float64 and labels.dtype == torch.float32
    assert api._tensors("train", (x, torch.tensor([0, 1, 2, 1], dtype=torch.int32)), "mse")[1].dtype == torch.int64


def test_submit_knows_the_values_before_the_tasks_run(tmp_path):
    """`submit` makes the surface and its shards before any task evaluates: the values come
    from the loss (cross_entropy: both; otherwise the first batch at the centre, on the CPU)."""
    from losslandscape.inputs import userimport
    from losslandscape.run.slurm import run_values

    (tmp_path / "meanloss.py").write_text(
        "import torch.nn.functional as F\n\n\n"
        "def ce(outputs, targets):\n"
        "    return F.cross_entropy(outputs, targets)  # a batch mean, no correct count: no accuracy\n")
    userimport.remember(tmp_path)
    assert run_values(make_spec(tmp_path)) == ("loss", "acc")
    spec = make_spec(tmp_path)
    spec.evaluation.loss = "meanloss:ce"
    assert run_values(spec) == ("loss",)
