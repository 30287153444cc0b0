"""What the pictures call the models, and the best point drawn whole (issue #30, item 11).

A model given to the Python interface is a live object: its spec names it
"python:<module>.<class>" and its weights are the tool's own copies (`<out>.model.pt`,
`.model2.pt`). The titles name it by its class, and an interpolation's ends are "model A" and
"model B", from the attribute `labels` written when the file is created, so that a copy of the
file alone, drawn elsewhere, says the same. Checkpoints of the command line keep their file
names; files from before the attribute draw as they did; a crafted `labels` is one line or
drawn as text, never a traceback. Every name is read back from the written figure: the
matplotlib Figure that was saved, and the Plotly figure of the HTML page.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import losslandscape as ll
from losslandscape.frontends import cli
from losslandscape.render import render

from helpers import in_process, page_figure, traces, write_surface

N_IN, N_OUT = 4, 3


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, N_IN, generator=g), torch.randint(0, N_OUT, (12,), generator=g)


def sequential(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(N_IN, N_OUT))


def texts(fig) -> list[str]:
    """Every text the Figure draws: titles, axis labels, tick labels (of the top axis too), legends."""
    found = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    return [t for t in found if t]


def top_ticks(fig) -> list[str]:
    """The tick labels of the curve's top axis (an interpolation's ends)."""
    return [t.get_text() for ax in fig.axes for top in ax.child_axes for t in top.get_xticklabels()]


def page_texts(page: Path) -> tuple[str, list[str]]:
    """(the page's title, its annotations' texts) from the Plotly figure in the HTML file."""
    fig = page_figure(page)
    return fig["layout"]["title"]["text"], [a["text"] for a in fig["layout"].get("annotations", [])]


def drawn(path: Path, out: Path) -> tuple[object, Path]:
    """render's default views of a 1-D file: (the curve's Figure, the page)."""
    figures = {}
    written = render([path], out, figures=figures)
    (fig,) = figures.values()
    (page,) = [p for p in written if p.suffix == ".html"]
    return fig, page


@pytest.fixture(scope="module")
def interpolation(tmp_path_factory) -> Path:
    """ll.interpolate between two live models: the surface file alone, copied into a folder of its
    own (no `.model.pt` copies beside it), as it reaches another machine."""
    made = tmp_path_factory.mktemp("made")
    ll.interpolate(sequential(0), sequential(1), train=tensors(), x="0:1:3", out=made / "interp.h5")
    alone = tmp_path_factory.mktemp("elsewhere") / "interp.h5"
    shutil.copy(made / "interp.h5", alone)
    return alone


def test_a_python_model_is_titled_by_its_class(tmp_path, capsys):
    s = ll.compute_surface(sequential(0), train=tensors(), x="-1:1:3", out=tmp_path / "s.h5")
    fig, page = drawn(s.path, tmp_path / "out")
    title = fig.axes[0].get_title()
    assert title == "Sequential: train loss and accuracy\nrandom directions, filter-normalised"
    assert not [t for t in texts(fig) if "python:" in t or ".model.pt" in t]
    head, _ = page_texts(page)
    assert head.startswith("Sequential: train loss and accuracy<br>") and "python:" not in head
    assert "<title>Sequential: s.h5</title>" in page.read_text()[:3000]
    assert ll.plot(s, kind="curve").axes[0].get_title().startswith("Sequential: train loss\n")  # in a notebook
    assert cli.main(["summary", str(s.path), "--json"]) == 0  # and the summary names it alike
    assert json.loads(capsys.readouterr().out)["model"] == "Sequential"


def test_interpolation_ends_of_python_models_are_model_a_and_b(interpolation, tmp_path):
    with h5py.File(interpolation, "r") as f:
        assert json.loads(f.attrs["labels"]) == {"name": "Sequential", "checkpoint": "model A",
                                                 "checkpoint2": "model B"}
    fig, page = drawn(interpolation, tmp_path)
    assert top_ticks(fig) == ["model A", "model B"]
    assert fig.axes[0].get_title() == "Sequential: train loss and accuracy\nmodel A; interpolation to model B"
    assert not [t for t in texts(fig) if "interp.h5" in t or "python:" in t]
    head, notes = page_texts(page)
    assert notes == ["model A", "model B"]
    assert head.endswith("<br>model A; interpolation to model B") and "interp.h5" not in head


def test_interpolation_ends_of_checkpoints_are_their_file_names(tmp_path):
    """A run of the command line (the same engine, in this process): its ends are the checkpoint
    files the spec names, and the file needs no `labels`."""
    torch.manual_seed(0)
    for name in ("start_of_run.pt", "end_of_run.pt"):
        torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict(), tmp_path / name)
    (tmp_path / "tinynet.py").write_text("import torch\n\ndef build():\n"
                                         "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    spec = tmp_path / "job.toml"
    spec.write_text(f'''
[model]
name = "tinynet:build"
checkpoint = "{tmp_path / 'start_of_run.pt'}"
checkpoint2 = "{tmp_path / 'end_of_run.pt'}"
[data]
name = "digits"
max_samples = 16
[directions]
kind = "interpolate"
[grid]
x = "0:1:3"
[evaluation]
device = "cpu"
[output]
surface = "{tmp_path / 'cli.h5'}"
''')
    assert in_process(spec) == 0
    with h5py.File(tmp_path / "cli.h5", "r") as f:
        assert "labels" not in f.attrs
    fig, page = drawn(tmp_path / "cli.h5", tmp_path / "out")
    assert top_ticks(fig) == ["start_of_run.pt", "end_of_run.pt"]
    assert fig.axes[0].get_title() == ("tinynet:build: train loss and accuracy\n"
                                       "start_of_run.pt; interpolation to end_of_run.pt")
    assert page_texts(page)[1] == ["start_of_run.pt", "end_of_run.pt"]


def test_a_file_from_before_the_labels_draws_as_before(interpolation, tmp_path):
    old = tmp_path / "interp.h5"
    shutil.copy(interpolation, old)
    with h5py.File(old, "r+") as f:
        del f.attrs["labels"]
    fig, page = drawn(old, tmp_path / "out")
    assert top_ticks(fig) == ["interp.h5.model.pt", "interp.h5.model2.pt"]  # the spec's checkpoints, as before
    assert fig.axes[0].get_title() == ("Sequential: train loss and accuracy\n"
                                       "interp.h5.model.pt; interpolation to interp.h5.model2.pt")
    assert page_texts(page)[1] == ["interp.h5.model.pt", "interp.h5.model2.pt"]


def crafted(tmp_path: Path, labels: str) -> Path:
    x = np.linspace(0, 1, 3)
    spec = {"model": {"name": "python:m.Net", "checkpoint": "/a/x.pt", "checkpoint2": "/a/y.pt"},
            "directions": {"kind": "interpolate"}, "grid": {"x": "0:1:3"}}
    path = write_surface(tmp_path / "crafted.h5", x, None, {"train_loss": 1 + x}, {"train_done": np.ones(3)},
                         spec=spec)
    with h5py.File(path, "r+") as f:
        f.attrs["labels"] = labels
    return path


@pytest.mark.parametrize("labels", ['["model A"]', '{"checkpoint": 3}', "{not json"])
def test_crafted_labels_are_one_line(labels, tmp_path, capsys):
    path = crafted(tmp_path, labels)
    assert cli.main(["render", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"losslandscape: error: {path}: attribute labels is ") and "expected a JSON object" in err
    assert not (tmp_path / "out").exists()


def test_labels_are_text_cut_to_200_characters(tmp_path):
    """A crafted label is drawn as it is written, even a matplotlib formula, and cut to 200 characters."""
    long = "b" * 5000
    path = crafted(tmp_path, json.dumps({"name": "$\\frac{$ net", "checkpoint": "a $x$ and $", "checkpoint2": long}))
    fig, page = drawn(path, tmp_path / "out")
    first, second = top_ticks(fig)
    assert first == "a \\$x\\$ and \\$"  # escaped: matplotlib draws the dollar signs
    assert len(second) == 200 and second.startswith("b" * 98) and "..." in second
    assert fig.axes[0].get_title().startswith("\\$\\frac{\\$ net: train loss")
    head, notes = page_texts(page)
    assert head.startswith("$\\frac{$ net: train loss") and notes[0] == "a $x$ and $"
    # The spec's names too (a file without labels): a checkpoint named "$x$.pt" is that name.
    with h5py.File(path, "r+") as f:
        del f.attrs["labels"]
        f.attrs["spec"] = f.attrs["spec"].replace("/a/x.pt", "/a/$x$.pt")
    figures = {}
    render([path], tmp_path / "spec", kinds=["curve"], figures=figures)
    assert top_ticks(*figures.values())[0] == "\\$x\\$.pt"


def test_the_best_point_on_a_corner_is_drawn_whole(tmp_path):
    """The minimum on the grid's corner: the star lies over the axes' corner, drawn whole (not clipped
    to the axes) in the static views, and not clipped on the page's map (Plotly clips by default)."""
    x = y = np.linspace(-1, 1, 51)
    X, Y = np.meshgrid(x, y)
    z = 1 + (X - 1) ** 2 + (Y - 1) ** 2  # the minimum at the corner (1, 1)
    path = write_surface(tmp_path / "corner.h5", x, y, {"train_loss": z}, {"train_done": np.ones_like(z)})
    figures = {}
    written = render([path], tmp_path, kinds=["contour", "filled", "heatmap", "html"], figures=figures)
    assert len(figures) == 3
    for fig in figures.values():
        renderer = fig.canvas.get_renderer()
        (star,) = [ln for ax in fig.axes for ln in ax.lines if ln.get_label() == "minimum (1, 1) = 1"]
        assert star.get_clip_on() is False
        box, axes = star.get_window_extent(renderer), star.axes.bbox
        assert box.x1 > axes.x1 and box.y1 > axes.y1  # over the axes' corner, and whole in the figure
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    fig = page_figure(next(p for p in written if p.suffix == ".html"))
    marks = traces(fig, part="best") + traces(fig, part="trained")
    assert marks and all(t["cliponaxis"] is False for t in marks)
