"""Tests of losslandscape.render: reading surface files, every kind of view,
the summary numbers, the CLI verbs, and the HTML page in a real headless Chromium.

Surface files are written here with h5py; the paraboloid loss = x^2 + 2 y^2 on
a non-square grid gives numbers to check against analytic values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest

from losslandscape.errors import UserError
from losslandscape.render import HESSIAN_KINDS, KINDS, load_surface, render, summarize
from losslandscape.render import cli as render_cli
from losslandscape.render import mplfigure, ranges

from helpers import run_chromium

ROOT = Path(__file__).resolve().parents[1]

# The paraboloid's grid: x step 0.15, y step 0.2, origin on the grid; neither
# sqrt(1) nor sqrt(1/2) is a grid coordinate, so the basin radii are unambiguous.
PX = np.linspace(-1.5, 1.5, 21)
PY = np.linspace(-1.4, 1.4, 15)


def write_surface(path, x, y=None, values=None, done=None, original=False, model="resnet56", spec=None):
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=np.float64)
        for name, data in (values or {}).items():
            f[name] = np.asarray(data, dtype=np.float64)
        if not original:
            f.attrs["format"] = "losslandscape-surface"
            f.attrs["format_version"] = 1
            f.attrs["spec"] = json.dumps(spec or {"model": {"name": model}, "grid": {"x": "-1.5:1.5:21"}})
            for name, flags in (done or {}).items():
                f[name] = np.asarray(flags, dtype=np.uint8)
    return Path(path)


def paraboloid():
    X, Y = np.meshgrid(PX, PY)  # (ny, nx)
    return X**2 + 2 * Y**2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("surfaces")
    L = paraboloid()
    acc = 100 - 10 * L
    ones = np.ones_like(L)
    out = {}
    out["para"] = write_surface(
        d / "para.h5",
        PX,
        PY,
        {"train_loss": L, "train_acc": acc, "test_loss": 1.1 * L + 0.05, "test_acc": acc - 3},
        {"train_done": ones, "test_done": ones},
    )

    # Partial: the coarse pass (every 4th point of each axis) and two finer points.
    done = np.zeros_like(L, dtype=np.uint8)
    done[::4, ::4] = 1
    done[1, 2] = done[6, 10] = 1
    stale = np.where(done == 1, L, 123.0)  # values of points not done must not count
    stale_acc = np.where(done == 1, acc, 7.0)
    out["partial"] = write_surface(
        d / "partial.h5", PX, PY, {"train_loss": stale, "train_acc": stale_acc}, {"train_done": done}
    )

    diverged = np.where(L > 3.0, np.inf, L)
    out["inf"] = write_surface(d / "inf.h5", PX, PY, {"train_loss": diverged, "train_acc": acc}, {"train_done": ones})

    first_row = np.zeros_like(done)
    first_row[0] = 1
    out["onerow"] = write_surface(
        d / "onerow.h5", PX, PY, {"train_loss": np.where(first_row == 1, L, np.nan)}, {"train_done": first_row}
    )

    nothing = np.full_like(L, np.nan)
    out["empty"] = write_surface(
        d / "empty.h5", PX, PY, {"train_loss": nothing, "train_acc": nothing}, {"train_done": np.zeros_like(done)}
    )

    x1 = np.linspace(-0.5, 1.5, 41)
    l1 = 4 * x1**2 * (x1 - 1) ** 2 + 0.1 + 0.2 * x1
    out["curve"] = write_surface(
        d / "curve.h5",
        x1,
        None,
        {"train_loss": l1, "train_acc": 100 - 20 * l1, "test_loss": l1 + 0.2, "test_acc": 95 - 20 * l1},
        {"train_done": np.ones(41), "test_done": np.ones(41)},
        spec={"model": {"name": "vgg9"}, "directions": {"kind": "interpolate"}},
    )
    out["curve2"] = write_surface(
        d / "curve2.h5", x1, None, {"train_loss": 2 * l1, "train_acc": 90 - 20 * l1}, {"train_done": np.ones(41)},
        model="vgg9-small-batch",
    )

    # The original code's file: square, no format attr, no flags, -1 = missing.
    xo = np.linspace(-1, 1, 11)
    Xo, Yo = np.meshgrid(xo, xo)
    lo = Xo**2 + Yo**2 + 0.1
    ao = 100 - 10 * lo
    lo[8:, 6:] = -1
    ao[8:, 6:] = -1
    out["orig"] = write_surface(d / "orig.h5", xo, xo, {"train_loss": lo, "train_acc": ao}, original=True)

    notes = d / "notes.h5"
    notes.write_text("this is not an HDF5 file\n")
    out["not_hdf5"] = notes
    with h5py.File(d / "no_x.h5", "w") as f:
        f["train_loss"] = np.zeros((3, 3))
    out["no_x"] = d / "no_x.h5"
    return out


# ---------------------------------------------------------------- helpers


def assert_png(path: Path) -> None:
    """A real picture: PNG magic, paper-figure size, and not blank."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert 600 <= w <= 2200 and 400 <= h <= 1600, (path, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank"
    packed = (rgb * 255).astype(np.uint32)
    colours = np.unique(packed[..., 0] << 16 | packed[..., 1] << 8 | packed[..., 2])
    assert colours.size > 50, f"{path} has only {colours.size} colours"


def page_figure(path: Path) -> dict:
    """The Plotly figure of an HTML page, {"data": [...], "layout": {...}}, read from its Plotly.newPlot call."""
    text = path.read_text()
    calls = list(re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text))
    assert len(calls) == 1, f"{path}: {len(calls)} Plotly.newPlot calls"
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(text, calls[0].end())
    layout, _ = decoder.raw_decode(text, re.compile(r",\s*").match(text, end).end())
    return {"data": data, "layout": layout}


def array(a) -> np.ndarray:
    """A figure's array as floats (NaN for null): a JSON list, or plotly's base64 typed array."""
    if isinstance(a, dict) and "bdata" in a:
        import base64

        out = np.frombuffer(base64.b64decode(a["bdata"]), dtype=np.dtype(a["dtype"])).astype(float)
        shape = a.get("shape")
        return out.reshape([int(n) for n in str(shape).split(",")]) if shape else out
    return np.array([[np.nan if v is None else v for v in row] if isinstance(row, list) else
                     (np.nan if row is None else row) for row in a], dtype=float)


def traces(fig: dict, series: str | None = None, scale: str | None = None, part: str | None = None) -> list[dict]:
    """The figure's traces of a series ("train_loss"), scale ("log", "linear"; "" for either) and part."""
    return [t for t in fig["data"] if (series is None or t["meta"]["series"] == series)
            and (scale is None or t["meta"]["scale"] == scale) and (part is None or t["meta"]["part"] == part)]


def menus(fig: dict) -> dict:
    """The figure's button rows by name: "series", "scale"."""
    return {m["name"]: m for m in fig["layout"].get("updatemenus", [])}


def parse_vtp(path: Path) -> dict:
    piece = ET.parse(path).getroot().find("PolyData/Piece")
    arrays = {a.get("Name"): np.array(a.text.split(), dtype=float) for a in piece.iter("DataArray")}
    return {
        "points": int(piece.get("NumberOfPoints")),
        "polys": int(piece.get("NumberOfPolys")),
        "arrays": arrays,
    }


# ---------------------------------------------------------------- reading


def test_load_ours_uses_done_flags(files):
    s = load_surface(files["partial"])
    assert s.x.shape == (21,) and s.y.shape == (15,)
    assert s.values["train_loss"].shape == (15, 21)
    done = np.zeros((15, 21), dtype=bool)
    done[::4, ::4] = True
    done[1, 2] = done[6, 10] = True
    assert np.array_equal(~np.isnan(s.values["train_loss"]), done)
    assert np.array_equal(~np.isnan(s.values["train_acc"]), done)
    assert s.fraction_done == {"train": pytest.approx(done.mean())}
    assert s.model_name == "resnet56"
    assert s.attrs["format"] == "losslandscape-surface"


def test_load_original_format(files, tmp_path):
    s = load_surface(files["orig"])
    assert s.original_format and s.model_name == "orig"
    loss = s.values["train_loss"]
    assert np.isnan(loss[8:, 6:]).all() and not np.isnan(loss[:8]).any()
    assert np.isnan(s.values["train_acc"][8:, 6:]).all()
    assert s.fraction_done["train"] == pytest.approx(1 - 3 * 5 / 121)

    # A non-square original file: allocated (nx, ny), filled in meshgrid (ny, nx) order.
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
    X, Y = np.meshgrid(x, y)
    write_surface(tmp_path / "o.h5", x, y, {"train_loss": (X + 10 * Y + 100).reshape(5, 3)}, original=True)
    assert np.array_equal(load_surface(tmp_path / "o.h5").values["train_loss"], X + 10 * Y + 100)


@pytest.mark.parametrize(
    "key, words",
    [("not_hdf5", "not a readable HDF5"), ("no_x", "no xcoordinates"), ("missing", "surface file: no such file")],
)
def test_bad_files_are_user_errors(files, tmp_path, key, words):
    path = files.get(key, tmp_path / "missing.h5")
    for call in (load_surface, summarize, lambda p: render([p], tmp_path)):
        with pytest.raises(UserError) as e:
            call(path)
        message = str(e.value)
        assert "\n" not in message and str(path) in message and words in message


def test_nothing_computed_is_a_user_error(files, tmp_path):
    with pytest.raises(UserError, match="nothing is computed yet"):
        render([files["empty"]], tmp_path)
    with pytest.raises(UserError, match="nothing is computed yet"):
        summarize(files["empty"])
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- pictures


@pytest.fixture(scope="module")
def para_outputs(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("para_out")
    return out, render([files["para"]], out)


def test_default_views_of_a_2d_surface(para_outputs):
    out, written = para_outputs
    names = sorted(p.name for p in written)
    views = ("contour", "filled", "heatmap", "surface3d")
    expected = [f"para_{s}_loss_{k}.png" for s in ("train", "test") for k in views]
    expected += ["para_train_loss.vtp", "para_test_loss.vtp", "para.html"]
    assert names == sorted(expected)
    assert sorted(p.name for p in out.iterdir()) == names
    for path in written:
        if path.suffix == ".png":
            assert_png(path)


def test_pdf_and_svg(files, tmp_path):
    pdf = render([files["para"]], tmp_path, kinds=["heatmap", "surface3d"], split="train", fmt="pdf")
    svg = render([files["curve"]], tmp_path, fmt="svg")
    assert [p.name for p in pdf] == ["para_train_loss_heatmap.pdf", "para_train_loss_surface3d.pdf"]
    for p in pdf:
        assert p.read_bytes()[:5] == b"%PDF-" and p.stat().st_size > 5000
    assert [p.name for p in svg] == ["curve_curve.svg"]
    head = svg[0].read_text()[:400]
    assert head.startswith("<?xml") and "<svg" in head


def test_curve_of_a_1d_surface(files, tmp_path):
    written = render([files["curve"]], tmp_path)
    assert [p.name for p in written] == ["curve_curve.png"]
    assert_png(written[0])
    logs = render([files["curve"]], tmp_path, split="test", value="loss", log=True)
    assert [p.name for p in logs] == ["curve_test_loss_curve.png"]
    assert_png(logs[0])
    with pytest.raises(UserError, match="does not fit"):
        render([files["curve"]], tmp_path, kinds=["contour"])


def test_partial_surface(files, tmp_path):
    written = render([files["partial"]], tmp_path, kinds=["contour", "heatmap", "surface3d", "vtp", "html"])
    assert len(written) == 5
    for p in written:
        if p.suffix == ".png":
            assert_png(p)
    # The fraction done is in the title (matplotlib keeps text as comments in SVG).
    svg = render([files["partial"]], tmp_path, kinds=["filled"], fmt="svg")[0].read_text()
    pct = round(100 * load_surface(files["partial"]).fraction_done["train"])
    assert f"resnet56: train loss ({pct}% done)" in svg

    # VTP: every point; polygons are the cells of the last whole pass (every 4th
    # point of each axis), not the broken cells around the two finer points.
    done = np.zeros((15, 21), dtype=bool)
    done[::4, ::4] = True
    done[1, 2] = done[6, 10] = True
    v = parse_vtp(next(p for p in written if p.suffix == ".vtp"))
    assert v["points"] == 21 * 15 and v["polys"] == 3 * 5
    assert np.array_equal(v["arrays"]["computed"], done.ravel().astype(float))
    corners = v["arrays"]["connectivity"].astype(int).reshape(-1, 4)
    rows, cols = np.divmod(corners, 21)
    assert (rows % 4 == 0).all() and (cols % 4 == 0).all() and done.ravel()[corners].all()

    # HTML: gaps (NaN) where not computed, the fraction done in the title, the computed points marked.
    fig = page_figure(next(p for p in written if p.suffix == ".html"))
    (heat,) = traces(fig, "train_loss", "linear", "map")
    z = array(heat["z"])
    assert heat["type"] == "heatmap" and np.isnan(z).any() and np.nanmax(z) < 100  # the stale 123.0 never shows
    assert np.count_nonzero(~np.isnan(z)) == done.sum()
    (surface,) = traces(fig, "train_loss", "linear", "surface")
    assert surface["type"] == "surface" and array(surface["z"]).shape == (4, 6)  # the whole coarse pass
    assert f"resnet56: train loss ({pct}% done)" in fig["layout"]["title"]["text"]
    (dots,) = traces(fig, "train_loss", "", "computed")
    assert array(dots["x"]).size == done.sum() and dots["name"] == "computed point"
    assert [t["name"] for t in traces(fig, "train_loss", "", "blank")] == ["not computed yet (blank)"]


def test_diverged_points_are_clipped(files, tmp_path):
    kinds = [k for k in KINDS if k not in ("curve", "compare", *HESSIAN_KINDS)]  # the loss's views
    written = render([files["inf"]], tmp_path, kinds=kinds)
    written += render([files["inf"]], tmp_path / "vmax", kinds=["filled", "surface3d"], vmax=2.0, zmax=1.5)
    for p in written:
        if p.suffix == ".png":
            assert_png(p)
    finite_max = paraboloid()[paraboloid() <= 3.0].max()
    z = parse_vtp(next(p for p in written if p.suffix == ".vtp"))["arrays"]["train_loss"]
    assert np.isfinite(z).all() and z.max() == pytest.approx(finite_max, rel=1e-6)
    fig = page_figure(next(p for p in written if p.suffix == ".html"))
    assert "Infinity" not in json.dumps(fig) and "NaN" not in json.dumps(fig)
    (linear,) = traces(fig, "train_loss", "linear", "map")
    (logged,) = traces(fig, "train_loss", "log", "map")
    for z in (array(linear["z"]), array(logged["customdata"]), 10 ** array(logged["z"])):
        assert np.isfinite(z).all() and z.max() == pytest.approx(finite_max, rel=1e-5)
    n = int((paraboloid() > 3.0).sum())
    assert f"{n} diverged points, drawn at the top of the range" in fig["layout"]["title"]["text"]
    s = summarize(files["inf"])["splits"]["train"]
    assert s["diverged_points"] == int((paraboloid() > 3.0).sum())
    json.dumps(s, allow_nan=False)


def test_original_file_renders(files, tmp_path):
    written = render([files["orig"]], tmp_path)
    assert len(written) == 6
    for p in written:
        if p.suffix == ".png":
            assert_png(p)
    # Missing points in a block: the full grid, less the cells touching the block.
    done = np.ones((11, 11), dtype=bool)
    done[8:, 6:] = False
    whole = done[:-1, :-1] & done[1:, :-1] & done[:-1, 1:] & done[1:, 1:]
    v = parse_vtp(next(p for p in written if p.suffix == ".vtp"))
    assert v["points"] == 121 and v["polys"] == whole.sum() == 100 - 3 * 5


def test_single_computed_row(files, tmp_path):
    """No whole cell yet: every view still draws (dots, one row of cells)."""
    written = render([files["onerow"]], tmp_path)
    assert len(written) == 6
    for p in written:
        if p.suffix == ".png":
            assert_png(p)
    assert parse_vtp(next(p for p in written if p.suffix == ".vtp"))["polys"] == 0


def test_compare(files, tmp_path):
    (two_d,) = render([files["para"], files["orig"]], tmp_path, kinds=["compare"], levels=12)
    assert two_d.name == "para_vs_orig_train_loss_compare.png"
    assert_png(two_d)
    (one_d,) = render([files["curve"], files["curve2"]], tmp_path, kinds=["compare"])
    assert one_d.name == "curve_vs_curve2_train_loss_compare.png"
    assert_png(one_d)
    with pytest.raises(UserError, match="at least two"):
        render([files["para"]], tmp_path, kinds=["compare"])
    with pytest.raises(UserError, match="mix 1-D and 2-D"):
        render([files["para"], files["curve"]], tmp_path, kinds=["compare"])


def test_options_are_checked(files, tmp_path):
    for kwargs, words in [
        ({"kinds": ["wireframe"]}, "--kind"),
        ({"fmt": "jpg"}, "--format"),
        ({"split": "val"}, "--split"),
        ({"levels": 1}, "--levels"),
        ({"vmin": 2.0, "vmax": 1.0}, "--vmin"),
        ({"log": True, "vmin": -1.0}, "--vmin"),
    ]:
        with pytest.raises(UserError, match=words):
            render([files["para"]], tmp_path, **{"kinds": ["heatmap"], **kwargs})
    with pytest.raises(UserError, match="no test_loss or test_acc"):
        render([files["partial"]], tmp_path, kinds=["heatmap"], split="test")


# ---------------------------------------------------------------- what the pictures say


def draw(paths, tmp_path, **kwargs) -> dict:
    """render() into tmp_path; {file name: the matplotlib Figure saved there}."""
    figures = {}
    render(paths, tmp_path, figures=figures, **kwargs)
    return {path.name: fig for path, fig in figures.items()}


def legend_texts(fig) -> list[str]:
    """The entries of every legend of a figure: the figure's and each axes'."""
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def marks(fig, label: str) -> list[tuple]:
    """(x, y[, z]) of every marker line labelled `label`, in any axes of the figure."""
    found = []
    for ax in fig.axes:
        for line in ax.lines:
            if line.get_label() == label:
                data = line.get_data_3d() if hasattr(line, "get_data_3d") else line.get_data()
                found += list(zip(*(np.asarray(d, dtype=float) for d in data)))
    return found


def test_2d_views_mark_the_trained_model_and_the_minimum(files, tmp_path):
    X, Y = np.meshgrid(PX, PY)
    loss = (X - 0.3) ** 2 + 2 * Y**2 + 0.05  # the minimum is off the centre, at (0.3, 0)
    values = {"train_loss": loss, "train_acc": 100 - loss}
    path = write_surface(tmp_path / "shifted.h5", PX, PY, values, {"train_done": np.ones_like(loss)})
    figs = draw([path], tmp_path, kinds=["contour", "filled", "heatmap", "surface3d"])
    figs |= draw([path, files["para"]], tmp_path, kinds=["compare"])
    assert len(figs) == 5
    for name, fig in figs.items():
        texts = legend_texts(fig)
        assert "trained model (0, 0)" in texts, name
        assert [t for t in texts if t.endswith("minimum (0.3, 0) = 0.05")], (name, texts)
        assert (0.3, 0.0) == pytest.approx(marks(fig, next(t for t in texts if "minimum" in t))[0][:2])
        assert (0.0, 0.0) == pytest.approx(marks(fig, "trained model (0, 0)")[0][:2])
    assert "shifted.h5: minimum (0.3, 0) = 0.05" in legend_texts(figs["shifted_vs_para_train_loss_compare.png"])
    # On the surface itself in 3-D (log10 heights: the loss spans two decades); the best accuracy is its maximum.
    z = marks(figs["shifted_train_loss_surface3d.png"], "minimum (0.3, 0) = 0.05")[0][2]
    assert z == pytest.approx(np.log10(0.05))
    (acc,) = draw([path], tmp_path, kinds=["heatmap"], value="acc").values()
    assert "maximum (0.3, 0) = 99.95" in legend_texts(acc)
    # A grid that does not reach (0, 0) has no trained model to mark.
    far = write_surface(tmp_path / "far.h5", PX + 2, PY, {"train_loss": loss}, {"train_done": np.ones_like(loss)})
    (fig,) = draw([far], tmp_path, kinds=["contour"]).values()
    assert "trained model (0, 0)" not in legend_texts(fig) and "minimum (2.3, 0) = 0.05" in legend_texts(fig)


def test_titles_name_the_checkpoint_and_the_directions(files, tmp_path):
    X, Y = np.meshgrid(PX, PY)
    values, done = {"train_loss": X**2 + Y**2 + 0.1}, {"train_done": np.ones_like(X)}
    cases = [
        ({"checkpoint": "trained/resnet56.pt"}, {"kind": "random", "norm": "filter"},
         "resnet56.pt; random directions, filter-normalised"),
        ({"checkpoint": ""}, {"kind": "random", "norm": "layer"},
         "fresh initialisation; random directions, layer-normalised"),
        ({"checkpoint": "a/b.pt"}, {"kind": "file", "file": "dirs/pca.h5"}, "b.pt; directions from pca.h5"),
        ({"checkpoint": "m0.pt", "checkpoint2": "m9.pt"}, {"kind": "interpolate"}, "m0.pt; interpolation to m9.pt"),
        ({"checkpoint": "m0.pt", "checkpoint2": "m9.pt", "checkpoint3": "runs/m5.pt"}, {"kind": "interpolate"},
         "m0.pt; plane through m9.pt and m5.pt"),
    ]
    for i, (model, directions, words) in enumerate(cases):
        spec = {"model": {"name": "resnet56", **model}, "directions": directions}
        path = write_surface(tmp_path / f"s{i}.h5", PX, PY, values, done, spec=spec)
        for fig in draw([path], tmp_path, kinds=["contour", "surface3d"]).values():
            assert fig.axes[0].get_title() == f"resnet56: train loss\n{words}"
    # axes of the plane through three models, and of one direction used twice
    plane = write_surface(tmp_path / "plane.h5", PX, PY, values, done, spec={
        "model": {"name": "vgg9", "checkpoint": "m0.pt", "checkpoint2": "m9.pt", "checkpoint3": "m5.pt"},
        "directions": {"kind": "interpolate"}})
    twice = write_surface(tmp_path / "twice.h5", PX, PY, values, done, spec={
        "model": {"name": "vgg9"}, "directions": {"kind": "random", "same_dir": True}})
    for path, xlabel, ylabel in ((plane, "towards m9.pt", "towards m5.pt"),
                                 (twice, "x direction", "y direction (= x direction)")):
        (fig,) = draw([path], tmp_path, kinds=["contour"]).values()
        assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == (xlabel, ylabel)
    spec = {"model": {"name": "vgg9", "checkpoint": "m0.pt", "checkpoint2": "out/m9.pt"},
            "directions": {"kind": "interpolate"}}
    values = {"train_loss": PX**2, "train_acc": 90 - PX**2}
    curve = write_surface(tmp_path / "c.h5", PX, None, values, {"train_done": np.ones(PX.size)}, spec=spec)
    (fig,) = draw([curve], tmp_path).values()
    assert fig.axes[0].get_title() == "vgg9: train loss and accuracy\nm0.pt; interpolation to m9.pt"
    # The original code's files record no spec: said so, and drawn.
    (fig,) = draw([files["orig"]], tmp_path, kinds=["filled"]).values()
    assert fig.axes[0].get_title().endswith("\nloss-landscape (original code) file")


def test_train_and_test_views_share_levels_and_colours(files, tmp_path):
    from matplotlib.colors import NoNorm
    from matplotlib.contour import ContourSet

    figs = draw([files["para"]], tmp_path, kinds=["contour", "filled", "heatmap", "surface3d"])
    for kind in ("contour", "filled", "heatmap", "surface3d"):
        train, test = (figs[f"para_{split}_loss_{kind}.png"] for split in ("train", "test"))
        # The colour bars: same range and scale.
        assert train.axes[1].get_ylim() == test.axes[1].get_ylim(), kind
        assert train.axes[1].get_yscale() == test.axes[1].get_yscale(), kind
        # What is drawn in colour: the same norm; contours: the same levels.
        drawn = [[c for c in fig.axes[0].collections if c.get_array() is not None] for fig in (train, test)]
        norms = {(c.norm.vmin, c.norm.vmax, type(c.norm)) for a in drawn for c in a if not isinstance(c.norm, NoNorm)}
        assert len(norms) == 1, (kind, norms)
        levels = [[tuple(c.levels) for c in artists if isinstance(c, ContourSet)] for artists in drawn]
        assert levels[0] == levels[1], kind
        if kind in ("contour", "filled"):
            assert levels[0] and len(levels[0][0]) >= 5


def test_curve_breaks_at_diverged_points_and_names_the_interpolation_ends(tmp_path):
    x = np.linspace(-0.5, 1.5, 21)
    loss = 1 + (x - 0.5) ** 2
    loss[[2, 19]] = np.nan, np.inf  # both diverged: the loader turns a computed NaN into +inf
    spec = {"model": {"name": "vgg9", "checkpoint": "out/model_0.pt", "checkpoint2": "out/model_20.pt"},
            "directions": {"kind": "interpolate"}}
    path = write_surface(
        tmp_path / "i.h5", x, None, {"train_loss": loss, "train_acc": 90 - loss}, {"train_done": np.ones(21)}, spec=spec
    )
    (fig,) = draw([path], tmp_path).values()
    ax = fig.axes[0]
    diverged = [2, 19]
    for label in ("train loss", "train accuracy"):
        (line,) = [ln for a in fig.axes for ln in a.lines if ln.get_label() == label]
        y = np.asarray(line.get_ydata(), dtype=float)
        assert np.isnan(y[diverged]).all() and np.isfinite(np.delete(y, diverged)).all(), label  # broken there
    (mark,) = [ln for ln in ax.lines if ln.get_label() == "diverged"]
    assert np.asarray(mark.get_xdata()) == pytest.approx(x[diverged])
    xy = np.column_stack([mark.get_xdata(), mark.get_ydata()])
    at = ax.transAxes.inverted().transform(mark.get_transform().transform(xy))
    assert at[:, 1] == pytest.approx(1.0)  # on the top edge of the axes
    assert "diverged" in legend_texts(fig)
    (top,) = ax.child_axes
    assert list(top.get_xticks()) == [0.0, 1.0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["model_0.pt", "model_20.pt"]
    # The original code's files: NaN (not -1) is a computed, diverged loss.
    orig = write_surface(tmp_path / "o.h5", x[:3], None, {"train_loss": [np.nan, -1.0, 0.5]}, original=True)
    assert load_surface(orig).values["train_loss"].tolist()[0] == np.inf


def test_compare_panels_are_titled_by_their_files(files, tmp_path):
    def panel_titles(fig):
        return [ax.get_title() for ax in fig.axes if ax.get_title()]

    (fig,) = draw([files["para"], files["orig"]], tmp_path, kinds=["compare"]).values()
    titles = panel_titles(fig)
    assert titles[0] == "para.h5: resnet56" and titles[1].startswith("orig.h5 (")
    (fig,) = draw([files["curve"], files["curve2"]], tmp_path, kinds=["compare"]).values()
    assert [t.split(":")[0] for t in panel_titles(fig)] == ["curve.h5", "curve2.h5"]
    # The same file name in two folders: the folder tells them apart.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(files["para"], tmp_path / folder / "para.h5")
    pair = [tmp_path / "a" / "para.h5", tmp_path / "b" / "para.h5"]
    (fig,) = draw(pair, tmp_path, kinds=["compare"], split="train").values()
    assert panel_titles(fig) == ["a/para.h5: resnet56", "b/para.h5: resnet56"]


def test_partial_surface_marks_are_explained_in_a_legend(files, tmp_path):
    figs = draw([files["partial"]], tmp_path, kinds=["contour", "filled", "heatmap"])
    computed = ~np.isnan(load_surface(files["partial"]).values["train_loss"])
    for name, fig in figs.items():
        texts = legend_texts(fig)
        assert "not computed yet (blank)" in texts, name
        if "heatmap" not in name:  # the heat map's cells are the computed points
            assert "computed point" in texts and len(marks(fig, "computed point")) == computed.sum(), name
    # No whole cell yet: the computed points are coloured dots, also in the legend.
    (fig,) = draw([files["onerow"]], tmp_path, kinds=["contour"]).values()
    dots = [c for c in fig.axes[0].collections if c.get_label() == "computed point"]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == PX.size
    assert {"computed point", "not computed yet (blank)"} <= set(legend_texts(fig))
    # A complete surface has nothing to explain.
    (fig,) = draw([files["para"]], tmp_path, kinds=["filled"], split="train").values()
    assert not {"computed point", "not computed yet (blank)"} & set(legend_texts(fig))


def test_surface3d_names_the_value_once(wide, tmp_path):
    (fig,) = draw([wide], tmp_path, kinds=["surface3d"], split="train").values()
    ax, cbar = fig.axes
    assert ax.get_zlabel() == "" and cbar.get_ylabel() == "train loss (log scale)"


# ---------------------------------------------------------------- value scale


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A trained net's loss: 1e-3 at the centre, 1e3 at the corners (six decades)."""
    x = np.linspace(-1, 1, 21)
    X, Y = np.meshgrid(x, x)
    loss = 10 ** (-3 + 3 * (X**2 + Y**2))
    acc = 100 - 99 * (X**2 + Y**2) / 2  # 100% down to 1%: two decades, but accuracy
    ones = np.ones_like(loss)
    return write_surface(
        tmp_path_factory.mktemp("wide") / "wide.h5", x, x, {"train_loss": loss, "train_acc": acc}, {"train_done": ones}
    )


def svg_texts(path: Path) -> list[str]:
    """The texts of a matplotlib SVG (drawn as paths, kept as comments)."""
    return re.findall(r"<!-- (.*?) -->", path.read_text())


def level_labels(texts: list[str], title: str) -> list[float]:
    """The numbers written after the title: contour labels, then colour-bar ticks."""
    after = texts[texts.index(title) + 1 :]
    return [float(v) for v in after if re.fullmatch(r"[0-9.]+", v)]


def test_auto_log_scale_choice():
    wide = [np.array([[1e-3, 1.0], [50.0, np.inf]])]
    narrow = [np.array([[0.5, 1.0], [40.0, np.nan]])]  # 80x: less than two decades
    assert ranges.auto_log(wide, "loss")
    assert not ranges.auto_log(narrow, "loss")
    assert not ranges.auto_log(wide, "acc")  # accuracy stays linear
    assert not ranges.auto_log(wide, "loss", vmax=10.0)  # a given range is a linear one
    assert not ranges.auto_log(wide, "loss", vmin=0.1)
    assert not ranges.auto_log(wide, "loss", log=False)
    assert ranges.auto_log(narrow, "acc", log=True)
    assert not ranges.auto_log([np.array([0.0, 0.0, 5.0])], "loss")  # one positive value


def test_wide_loss_gets_log_contours_by_default(wide, tmp_path):
    from losslandscape.render import plot2d

    s = load_surface(wide)
    view = plot2d.View2D(s, "train", "loss")
    assert view.range.log and view.label() == "train loss (log scale)"
    lv = view.range.levels(plot2d.CONTOUR_LEVELS)
    assert (lv < 1).sum() >= 5 and lv.min() < 0.01 and lv.max() > 100
    assert np.all(np.diff(np.log10(lv)) < 0.5)  # 1-2-5 steps: close rings around the minimum

    (svg,) = render([wide], tmp_path, kinds=["contour"], fmt="svg")
    texts = svg_texts(svg)
    assert "train loss (log scale)" in texts
    # Contour labels below 1 (the colour bar's ticks are powers of ten only).
    labels = level_labels(texts, "resnet56: train loss")
    assert len({v for v in labels if 0 < v < 1 and not math.log10(v).is_integer()}) >= 2

    # Accuracy stays linear; so does the loss with --linear, or with a given vmax.
    assert not plot2d.View2D(s, "train", "acc").range.log
    for kwargs in ({"log": False}, {"vmax": 10.0}):
        view = plot2d.View2D(s, "train", "loss", **kwargs)
        assert not view.range.log and view.label() == "train loss"
        lv = view.range.levels(plot2d.CONTOUR_LEVELS)
        assert np.allclose(np.diff(lv), lv[1] - lv[0]) and (lv < 1).sum() <= 1
    (svg,) = render([wide], tmp_path / "linear", kinds=["contour"], fmt="svg", log=False)
    texts = svg_texts(svg)
    assert "train loss" in texts and "train loss (log scale)" not in texts
    assert [v for v in level_labels(texts, "resnet56: train loss") if v < 1] in ([], [0.0])


def test_wide_loss_other_views(wide, tmp_path):
    # surface3d: log10 heights, ticked and labelled as the loss itself.
    written = render([wide], tmp_path, kinds=["surface3d", "html"], fmt="svg")
    texts = svg_texts(written[0])
    assert texts.count("train loss (log scale)") == 1  # the colour bar's label, not repeated on the z axis
    assert {"0.001", "1", "1000"} <= set(texts)
    # html: each value starts on that scale (the first of its scales); a loss can switch to the other.
    series = page_figure(written[1])["layout"]["meta"]["series"]
    assert {s["name"]: s["scales"] for s in series} == {"train_loss": ["log", "linear"], "train_acc": ["linear"]}
    (page,) = render([wide], tmp_path / "linear", kinds=["html"], log=False)
    series = page_figure(page)["layout"]["meta"]["series"]
    assert {s["name"]: s["scales"] for s in series} == {"train_loss": ["linear", "log"], "train_acc": ["linear"]}
    # compare: one shared log colour scale.
    (svg,) = render([wide, wide], tmp_path, kinds=["compare"], fmt="svg")
    assert "train loss (log scale)" in svg_texts(svg)


# ---------------------------------------------------------------- VTP


def test_vtp_structure(para_outputs, files, tmp_path):
    out, _ = para_outputs
    path = out / "para_train_loss.vtp"
    root = ET.parse(path).getroot()
    assert root.get("type") == "PolyData"
    v = parse_vtp(path)
    nx, ny = PX.size, PY.size
    assert v["points"] == nx * ny and v["polys"] == (nx - 1) * (ny - 1)
    a = v["arrays"]
    assert a["Points"].size == 3 * nx * ny
    assert a["connectivity"].size == 4 * v["polys"]
    assert np.array_equal(a["offsets"], 4 * np.arange(1, v["polys"] + 1))
    assert a["connectivity"].max() == nx * ny - 1
    pts = a["Points"].reshape(ny, nx, 3)  # point id j * nx + i
    X, Y = np.meshgrid(PX, PY)
    assert np.allclose(pts[..., 0], X) and np.allclose(pts[..., 1], Y)
    assert np.allclose(pts[..., 2], paraboloid(), rtol=1e-6, atol=1e-7)

    (logged,) = render([files["para"]], tmp_path, kinds=["vtp"], split="train", log=True, zmax=2.0)
    z = parse_vtp(logged)["arrays"]["log10_train_loss"]
    L = paraboloid().ravel()
    positive_min = L[L > 0].min()
    expected = np.log10(np.clip(L, positive_min, 2.0))
    assert np.allclose(z, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- HTML


class _Tags(HTMLParser):
    """The start tags of a page with their attributes, and the text of its style elements
    (a script's body is text to the parser, so the URLs in plotly.js's strings are no tags)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if self.tags and self.tags[-1][0] == "style":
            self.styles.append(data)


def test_html_is_self_contained(para_outputs):
    """One file with plotly.js inlined; no tag loads anything (no src, no href, no link, no CDN)."""
    out, _ = para_outputs
    text = (out / "para.html").read_text()
    page = _Tags()
    page.feed(text)
    page.close()
    loads = {"src", "href", "xlink:href", "data", "srcset", "poster", "background", "action", "manifest"}
    assert not [(tag, attrs) for tag, attrs in page.tags if loads & set(attrs)]
    assert not {tag for tag, _ in page.tags} & {"link", "iframe", "frame", "object", "embed", "img", "base", "audio",
                                               "video", "source"}
    assert not [css for css in page.styles if re.search(r"@import|url\(", css)]
    scripts = [tag for tag, _ in page.tags if tag == "script"]
    assert scripts and "plotly.js v" in text and "Plotly.newPlot(" in text  # the library, inlined
    assert 3e6 < len(text) < 6e6  # plotly.js is ~4.8 MB; the data of a 21 x 15 grid are little
    assert "cdn.plot.ly" not in "".join(str(attrs) for _, attrs in page.tags)


def test_html_figure_holds_every_computed_series(para_outputs):
    out, _ = para_outputs
    fig = page_figure(out / "para.html")
    series = fig["layout"]["meta"]["series"]
    assert [s["label"] for s in series] == ["train loss", "train accuracy (%)", "test loss", "test accuracy (%)"]
    L = paraboloid()
    expected = {"train_loss": L, "train_acc": 100 - 10 * L, "test_loss": 1.1 * L + 0.05, "test_acc": 97 - 10 * L}
    for s in series:
        want = expected[s["name"]]
        for scale in s["scales"]:
            (surface,) = traces(fig, s["name"], scale, "surface")
            (heat,) = traces(fig, s["name"], scale, "map")
            assert surface["type"] == "surface" and heat["type"] in ("heatmap", "contour"), s
            assert heat["contours"]["coloring"] == "heatmap"  # a heat map with contour lines over it
            for t in (surface, heat):
                assert np.allclose(array(t["x"]), PX) and np.allclose(array(t["y"]), PY)
                # Hover: x, y and the value itself (on a log scale, customdata: z is its log10).
                shown = "customdata" if t["type"] == "surface" or scale == "log" else "z"
                assert all(f"%{{{k}" in t["hovertemplate"] for k in ("x", "y", shown)), t["hovertemplate"]
                assert np.allclose(array(t[shown]), want, rtol=1e-5, atol=1e-5), (s, scale, t["type"])
                z = array(t["z"])
                if scale == "log":  # log10 heights and colours, floored at the smallest value > 0
                    floor = min(v[v > 0].min() for k, v in expected.items() if k.endswith("_loss"))
                    assert np.allclose(10**z, np.maximum(want, floor), rtol=1e-4), s
                else:
                    assert np.allclose(z, want, rtol=1e-5, atol=1e-5), s
    # Train and test of one value share one colour range, on each scale.
    for value in ("loss", "acc"):
        for scale in ("log", "linear"):
            maps = [t for t in traces(fig, scale=scale, part="map") if t["meta"]["series"].endswith(value)]
            surfaces = [t for t in traces(fig, scale=scale, part="surface") if t["meta"]["series"].endswith(value)]
            assert len(maps) == (2 if value == "loss" or scale == "linear" else 0)
            assert len({(t["zmin"], t["zmax"]) for t in maps}) <= 1
            assert len({(t["cmin"], t["cmax"]) for t in surfaces}) <= 1


def test_html_buttons_choose_the_series_and_the_scale(para_outputs):
    out, _ = para_outputs
    fig = page_figure(out / "para.html")
    series = fig["layout"]["meta"]["series"]
    rows = menus(fig)
    selector, toggle = rows["series"], rows["scale"]
    toggle_key = f"updatemenus[{fig['layout']['updatemenus'].index(toggle)}]"

    def shown(visible: list) -> set:
        return {(t["meta"]["series"], t["meta"]["scale"]) for t, v in zip(fig["data"], visible) if v is True}

    # Log is offered for a loss (this one spans more than two decades: log first), not for an accuracy.
    assert {s["name"]: s["scales"] for s in series} == {
        "train_loss": ["log", "linear"], "train_acc": ["linear"], "test_loss": ["log", "linear"], "test_acc": ["linear"]
    }
    # At first: train loss, on the log scale.
    assert shown([t.get("visible", True) for t in fig["data"]]) == {("train_loss", ""), ("train_loss", "log")}
    assert [b["label"] for b in toggle["buttons"]] == ["log scale", "linear scale"] and toggle["active"] == 0
    assert fig["layout"]["title"]["text"] == "resnet56: train loss"
    assert fig["layout"]["scene"]["zaxis"]["title"]["text"] == "loss (log scale)"
    # A button per split and value; each shows that series on its first scale and points the scale
    # buttons at it (hidden where it has one scale).
    assert [b["label"] for b in selector["buttons"]] == [s["label"] for s in series]
    for button, s in zip(selector["buttons"], series):
        assert button["method"] == "update"
        restyle, relayout = button["args"]
        assert shown(restyle["visible"]) == {(s["name"], ""), (s["name"], s["scales"][0])}
        assert relayout["title.text"] == f"resnet56: {s['name'].replace('_', ' ').replace('acc', 'accuracy')}"
        assert relayout[f"{toggle_key}.active"] == ["log", "linear"].index(s["scales"][0])
        assert relayout[f"{toggle_key}.visible"] == (len(s["scales"]) > 1)
        for scale, scale_button in zip(("log", "linear"), relayout[f"{toggle_key}.buttons"]):
            if scale not in s["scales"]:
                assert scale_button["method"] == "skip"
                continue
            restyle, layout = scale_button["args"]
            assert shown(restyle["visible"]) == {(s["name"], ""), (s["name"], scale)}
            assert layout["scene.zaxis.title.text"].endswith("(log scale)") == (scale == "log")
    # The log scale: log10 heights and colours, ticked at round values of the loss itself.
    (heat,) = traces(fig, "train_loss", "log", "map")
    bar = heat["colorbar"]
    assert bar["title"]["text"] == "train loss (log scale)"
    assert np.allclose(10 ** np.array(bar["tickvals"]), [float(t) for t in bar["ticktext"]])
    layout = toggle["buttons"][0]["args"][1]
    ticks = [float(t) for t in layout["scene.zaxis.ticktext"]]
    assert np.allclose(10 ** np.array(layout["scene.zaxis.tickvals"]), ticks)
    assert toggle["buttons"][1]["args"][1]["scene.zaxis.tickvals"] is None  # linear: plotly's own ticks


def test_html_marks_the_trained_model_and_the_minimum(files, tmp_path):
    X, Y = np.meshgrid(PX, PY)
    loss = (X - 0.3) ** 2 + 2 * Y**2 + 0.05  # the minimum is off the centre, at (0.3, 0)
    values = {"train_loss": loss, "train_acc": 100 - loss}
    path = write_surface(tmp_path / "shifted.h5", PX, PY, values, {"train_done": np.ones_like(loss)})
    (page,) = render([path], tmp_path, kinds=["html"])
    fig = page_figure(page)
    (trained,) = traces(fig, "train_loss", "", "trained")
    (best,) = traces(fig, "train_loss", "", "best")
    assert trained["name"] == "trained model (0, 0)" and (trained["x"], trained["y"]) == ([0.0], [0.0])
    assert best["name"] == "minimum (0.3, 0) = 0.05" and best["x"] == pytest.approx([0.3]) and best["y"] == [0.0]
    assert trained.get("showlegend", True) and best.get("showlegend", True)  # named in the legend
    assert traces(fig, "train_acc", "", "best")[0]["name"] == "maximum (0.3, 0) = 99.95"
    # On the surface in 3-D: log10 heights on the log scale (this loss spans two decades), the value on the linear.
    for scale, height in (("log", np.log10), ("linear", lambda v: v)):
        (best3d,) = traces(fig, "train_loss", scale, "best3d")
        (trained3d,) = traces(fig, "train_loss", scale, "trained3d")
        assert (best3d["x"], best3d["y"]) == (best["x"], best["y"]) and best3d["z"][0] == pytest.approx(height(0.05))
        assert trained3d["z"][0] == pytest.approx(height(0.09 + 0.05))
    # A complete surface has nothing to explain; a grid that does not reach (0, 0) has no trained model.
    assert not traces(fig, part="computed") and not traces(fig, part="blank")
    far = write_surface(tmp_path / "far.h5", PX + 2, PY, {"train_loss": loss}, {"train_done": np.ones_like(loss)})
    fig = page_figure(render([far], tmp_path, kinds=["html"])[0])
    assert not traces(fig, part="trained") and traces(fig, part="best")[0]["name"] == "minimum (2.3, 0) = 0.05"
    # No whole cell yet: the computed points as coloured dots in 3-D, the row of cells on the map.
    fig = page_figure(render([files["onerow"]], tmp_path, kinds=["html"])[0])
    (dots,) = traces(fig, "train_loss", "linear", "surface")
    assert dots["type"] == "scatter3d" and array(dots["x"]).size == PX.size
    assert array(traces(fig, "train_loss", "linear", "map")[0]["z"]).shape == (1, PX.size)
    assert "(7% done)" in fig["layout"]["title"]["text"]


def test_html_of_a_1d_surface_is_a_line_chart(files, tmp_path):
    (page,) = render([files["curve"]], tmp_path, kinds=["html"])
    assert page.name == "curve.html"
    fig = page_figure(page)
    lines = traces(fig, part="line")
    assert {t["type"] for t in lines} == {"scatter"} and not traces(fig, part="surface")
    assert [t["name"] for t in lines] == ["train loss", "train accuracy", "test loss", "test accuracy"]
    s = load_surface(files["curve"])
    for t in lines:
        name = t["meta"]["series"]
        assert np.allclose(array(t["x"]), s.x) and np.allclose(array(t["y"]), s.values[name])
        assert t["yaxis"] == ("y" if name.endswith("_loss") else "y2")  # accuracy on the right-hand axis
        assert t["line"]["dash"] == ("solid" if name.startswith("train") else "dash")
    rows = menus(fig)
    assert [b["label"] for b in rows["series"]["buttons"]] == [
        "all", "train loss", "train accuracy (%)", "test loss", "test accuracy (%)"
    ]
    # The scale buttons switch the loss axis; linear first, as the curve, unless --log.
    assert [b["args"][0]["yaxis.type"] for b in rows["scale"]["buttons"]] == ["log", "linear"]
    assert fig["layout"]["yaxis"]["type"] == "linear" and rows["scale"]["active"] == 1
    (page,) = render([files["curve"]], tmp_path / "log", kinds=["html"], log=True)
    fig = page_figure(page)
    assert fig["layout"]["yaxis"]["type"] == "log" and menus(fig)["scale"]["active"] == 0
    # A diverged point breaks the line and is marked.
    x = np.linspace(-0.5, 1.5, 21)
    loss = 1 + (x - 0.5) ** 2
    loss[[2, 19]] = np.nan, np.inf
    path = write_surface(tmp_path / "i.h5", x, None, {"train_loss": loss}, {"train_done": np.ones(21)})
    fig = page_figure(render([path], tmp_path, kinds=["html"])[0])
    (line,) = traces(fig, "train_loss", part="line")
    y = array(line["y"])
    assert np.isnan(y[[2, 19]]).all() and np.isfinite(np.delete(y, [2, 19])).all()
    (mark,) = traces(fig, "train_loss", part="diverged")
    assert mark["name"] == "diverged" and np.allclose(array(mark["x"]), x[[2, 19]])


def test_html_compares_several_files_on_one_colour_scale(files, tmp_path):
    written = render([files["para"], files["orig"]], tmp_path, kinds=["html"])
    assert [p.name for p in written] == ["para.html", "orig.html", "para_vs_orig_compare.html"]
    fig = page_figure(written[-1])
    series = fig["layout"]["meta"]["series"]
    assert [s["name"] for s in series] == ["train_loss", "train_acc"]  # what both files computed
    for s in series:
        for scale in s["scales"]:
            surfaces = traces(fig, s["name"], scale, "surface")
            maps = traces(fig, s["name"], scale, "map")
            assert [t["scene"] for t in surfaces] == ["scene", "scene2"]  # side by side
            assert [t["xaxis"] for t in maps] == ["x", "x2"]
            assert len({(t["cmin"], t["cmax"]) for t in surfaces}) == 1  # one colour scale
            assert len({(t["zmin"], t["zmax"]) for t in maps}) == 1
            assert [t.get("showscale") for t in maps] == [True, False]  # and one colour bar
    names = {t["name"] for t in traces(fig, "train_loss", "", "best")}
    assert names == {"para.h5: minimum (0, 0) = 0", "orig.h5: minimum (0, 0) = 0.1"}
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles[0] == "para.h5: resnet56" and titles[1].startswith("orig.h5 (")
    # 1-D files: one chart, a line per file; files of both kinds: a page each, no comparison.
    written = render([files["curve"], files["curve2"]], tmp_path, kinds=["html"], split="train")
    assert [p.name for p in written] == ["curve_train.html", "curve2_train.html", "curve_vs_curve2_train_compare.html"]
    lines = traces(page_figure(written[-1]), "train_loss", part="line")
    assert [t["name"] for t in lines] == ["curve.h5: train loss", "curve2.h5: train loss"]
    written = render([files["para"], files["curve"]], tmp_path / "mixed", kinds=["html"])
    assert [p.name for p in written] == ["para.html", "curve.html"]
    # Nothing computed in both: no comparison either.
    done = {"train_done": np.ones_like(paraboloid())}
    a = write_surface(tmp_path / "a.h5", PX, PY, {"train_loss": paraboloid()}, done)
    b = write_surface(tmp_path / "b.h5", PX, PY, {"train_acc": 100 - paraboloid()}, done)
    assert [p.name for p in render([a, b], tmp_path / "apart", kinds=["html"])] == ["a.html", "b.html"]


# Put first in a copy of the page: reports on the console, as "PAGECHECK <what> <json>", every
# error, the resources the page loaded, and what the page shows after each click on its buttons
# (every split and value, each with its scales).
PAGE_CHECK = """<script>
(function () {
  function report(what, data) { console.log("PAGECHECK " + what + " " + JSON.stringify(data)); }
  var error = console.error;
  console.error = function () {
    report("error", [].join.call(arguments, " "));
    return error.apply(console, arguments);
  };
  window.addEventListener("error", function (e) { report("error", "uncaught " + e.message); });
  window.addEventListener("load", function () {
    report("resources", performance.getEntriesByType("resource").map(function (r) { return r.name; }));
    var gd = document.querySelector(".js-plotly-plot");
    if (!gd || !gd.data) { report("error", "no plot"); return; }
    function state(click) {
      report("state", {click: click, title: gd.layout.title.text, scene: gd.layout.scene.xaxis.visible !== false,
        shown: gd.data.filter(function (t) { return t.visible !== false; }).map(function (t) { return t.meta; }),
        menus: gd.layout.updatemenus.map(function (m) { return {active: m.active, visible: m.visible !== false}; })});
    }
    function click(label) {
      var found = [].filter.call(document.querySelectorAll("g.updatemenu-button"),
                                 function (b) { return b.textContent === label; });
      if (found.length !== 1) { report("error", found.length + " buttons " + label); return; }
      found[0].dispatchEvent(new MouseEvent("click", {bubbles: true}));
    }
    var steps = [];
    gd.layout.meta.series.forEach(function (s) {
      steps.push(s.label);
      if (s.scales.length > 1) s.scales.slice().reverse().forEach(function (scale) { steps.push(scale + " scale"); });
    });
    state(null);
    (function next(i) {
      if (i >= steps.length) { report("done", steps.length); return; }
      click(steps[i]);
      setTimeout(function () { state(steps[i]); next(i + 1); }, 100);
    })(0);
  });
})();
</script>"""


@pytest.mark.slow
def test_html_renders_in_headless_chromium(chromium, para_outputs, tmp_path):
    import matplotlib.image as mpimg

    out, _ = para_outputs
    page = out / "para.html"
    # The page as written, offline: no error on the console, and a screenshot with the 3-D surface
    # and the map in colour.
    shot = tmp_path / "shot.png"
    proc = run_chromium(chromium, page, tmp_path / "profile1", "--window-size=1200,800", "--hide-scrollbars",
                        "--virtual-time-budget=5000", f"--screenshot={shot}")
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if re.search(r"Uncaught|Error|Failed to load|net::ERR", line)], console
    assert shot.exists(), proc.stderr[-500:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (800, 1200)
    assert img.std() > 0.05
    packed = (img * 255).astype(np.uint32)
    colours = np.unique(packed[..., 0] << 16 | packed[..., 1] << 8 | packed[..., 2])
    assert colours.size > 200, f"screenshot has only {colours.size} colours"
    chroma = img.max(axis=-1) - img.min(axis=-1)
    assert (chroma[:, :600] > 0.25).mean() > 0.04, "the 3-D surface did not draw"
    assert (chroma[:, 600:] > 0.25).mean() > 0.08, "the map did not draw"

    # A copy that reports errors, what it loaded, and what each button shows.
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("<head>", "<head>" + PAGE_CHECK, 1))
    proc = run_chromium(chromium, checked, tmp_path / "profile2", "--virtual-time-budget=30000", "--dump-dom")
    assert all(k in proc.stdout for k in ('class="plotly-graph-div js-plotly-plot"', "main-svg", "gl-container"))
    reports = [(m[1], json.loads(m[2])) for m in re.finditer(r'"PAGECHECK (\w+) (.*)", source: ', proc.stderr)]
    kinds = [what for what, _ in reports]
    assert "error" not in kinds, [data for what, data in reports if what == "error"]
    assert ("resources", []) in reports  # nothing loaded, from the network or from files
    series = {s["label"]: s for s in page_figure(page)["layout"]["meta"]["series"]}
    states = [data for what, data in reports if what == "state"]
    assert len(states) == 1 + len(series) + 2 * 2 and ("done", len(states) - 1) in reports
    current, scale = next(iter(series.values())), None
    for state in states:
        if state["click"] in series or state["click"] is None:
            current = series.get(state["click"], current)
            scale = current["scales"][0]
        else:
            scale = state["click"].split()[0]
        shown = {(t["series"], t["scale"]) for t in state["shown"]}
        assert shown == {(current["name"], ""), (current["name"], scale)}, state
        assert {"surface", "map", "best"} <= {t["part"] for t in state["shown"]}, state
        assert state["title"].startswith("resnet56: " + current["label"].split(" (")[0]), state
        selector, toggle = state["menus"]
        assert selector["active"] == list(series).index(current["label"])
        assert toggle == {"active": ["log", "linear"].index(scale), "visible": len(current["scales"]) > 1}, state


# ---------------------------------------------------------------- summary


def test_summary_of_the_paraboloid(files):
    for threshold in (1.0, 0.5, 2.0):
        s = summarize(files["para"], threshold=threshold)
        json.dumps(s, allow_nan=False)
        t = s["splits"]["train"]
        assert t["fraction_done"] == 1.0
        assert t["centre"] == {"x": 0.0, "y": 0.0, "loss": 0.0, "acc": 100.0, "on_grid": True}
        assert t["minimum"]["loss"] == 0.0 and (t["minimum"]["x"], t["minimum"]["y"]) == (0.0, 0.0)

        # Basin: the first grid coordinate where x^2 (or 2 y^2) exceeds the threshold.
        bx = min(c for c in PX if c > 0 and c * c > threshold)
        by = min(c for c in PY if c > 0 and 2 * c * c > threshold)
        b = t["basin_radius"]
        assert b["x+"] == pytest.approx(bx) and b["x-"] == pytest.approx(bx)
        assert b["y+"] == pytest.approx(by) and b["y-"] == pytest.approx(by)
        assert bx == pytest.approx(math.ceil(math.sqrt(threshold) / 0.15 - 1e-9) * 0.15)

    # Rings: mean of x^2 + 2 y^2 over the grid points whose distance to the
    # origin is within half a grid step (the larger of 0.15 and 0.2) of r.
    step = 0.2
    rings = s["splits"]["train"]["rings"]
    assert len(rings) >= 3
    for ring in rings:
        r = ring["radius"]
        assert np.isclose(np.abs(PX), r).any(), "radii are grid coordinates"
        members = [
            xi * xi + 2 * yj * yj
            for xi in PX
            for yj in PY
            if r - step / 2 - 1e-9 <= math.hypot(xi, yj) < r + step / 2 - 1e-9
        ]
        assert ring["points"] == ring["computed"] == len(members) > 0
        assert ring["mean_loss"] == pytest.approx(sum(members) / len(members))
        assert ring["mean_increase"] == pytest.approx(sum(members) / len(members))
    assert [r["mean_increase"] for r in rings] == sorted(r["mean_increase"] for r in rings)

    test = s["splits"]["test"]
    assert test["centre"]["loss"] == pytest.approx(0.05)
    assert rings[0]["mean_increase"] * 1.1 == pytest.approx(test["rings"][0]["mean_increase"])


def test_summary_of_partial_and_1d(files):
    p = summarize(files["partial"])["splits"]["train"]
    assert p["fraction_done"] == pytest.approx(26 / 315)
    assert p["centre"]["loss"] is None  # (0, 0) is not on the coarse lattice
    assert p["basin_radius"] == {"x+": None, "x-": None, "y+": None, "y-": None}
    assert all(r["computed"] <= r["points"] for r in p["rings"])

    c = summarize(files["curve"])
    assert c["dims"] == 1 and set(c["splits"]) == {"train", "test"}
    t = c["splits"]["train"]
    x = np.linspace(-0.5, 1.5, 41)
    assert t["centre"]["x"] == 0.0 and t["centre"]["loss"] == pytest.approx(0.1)
    loss = 4 * x**2 * (x - 1) ** 2 + 0.1 + 0.2 * x
    right = next(xi for xi, li in zip(x, loss) if xi > 0 and li > 1.1)
    left = next(abs(xi) for xi, li in zip(x[::-1], loss[::-1]) if xi < 0 and li > 1.1)
    assert t["basin_radius"] == {"x+": pytest.approx(right), "x-": pytest.approx(left)}


# ---------------------------------------------------------------- CLI


def test_cli_verbs(files, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="verb")
    render_cli.add_render_arguments(sub.add_parser("render"))
    render_cli.add_summary_arguments(sub.add_parser("summary"))

    args = parser.parse_args(
        ["render", "--kind", "heatmap,contour", "--kind", "vtp", str(files["para"]), "--split", "train",
         "--out", str(tmp_path), "--format", "pdf", "--levels", "10"]
    )
    assert render_cli.run_render(args) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == [
        "para_train_loss_heatmap.pdf", "para_train_loss_contour.pdf", "para_train_loss.vtp"
    ]
    assert all(Path(p).exists() for p in printed)
    with pytest.raises(SystemExit):
        parser.parse_args(["render", "--kind", "wireframe", str(files["para"])])
    # The value scale: auto (None) by default, --log, --linear (alias --no-log); not both.
    for flags, log in (([], None), (["--log"], True), (["--linear"], False), (["--no-log"], False)):
        assert parser.parse_args(["render", str(files["para"]), *flags]).log is log
    with pytest.raises(SystemExit):
        parser.parse_args(["render", str(files["para"]), "--log", "--linear"])
    capsys.readouterr()

    assert render_cli.run_summary(parser.parse_args(["summary", str(files["para"]), "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["splits"]["train"]["centre"]["loss"] == 0.0
    assert render_cli.run_summary(parser.parse_args(["summary", str(files["para"]), "--threshold", "0.5"])) == 0
    table = capsys.readouterr().out
    assert "resnet56" in table and "basin radius" in table and "[test]" in table


# ---------------------------------------------------------------- dependencies


@pytest.mark.slow  # several seconds: the full suite runs it, `make check` does not
def test_render_imports_neither_torch_nor_mpi4py(files, hessian_files, pca_files, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    check = "import losslandscape.render, sys; assert 'torch' not in sys.modules and 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=120)
    # Drawing too (the Hessian's views, a PCA surface's paths and summary included): and no pyplot, whose global
    # figure registry would leak figures.
    hessian = ["ratio", "eigenvalues", "spectrum", "html"]
    draw = (
        "import sys; from losslandscape.render import render, summarize; "
        f"render([{str(files['curve'])!r}], {str(tmp_path)!r}); "
        f"render([{str(hessian_files['maps'])!r}], {str(tmp_path)!r}, kinds={hessian!r}); "
        f"summarize({str(hessian_files['maps'])!r}); "
        f"render([{str(pca_files['pca'])!r}, {str(pca_files['empty'])!r}], {str(tmp_path)!r}); "
        f"summarize({str(pca_files['pca'])!r}); "
        "bad = [m for m in ('torch', 'mpi4py', 'matplotlib.pyplot') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", draw], env=env, check=True, timeout=120)


def test_paper_style_is_scoped():
    import matplotlib

    before = matplotlib.rcParams["font.size"]
    with mplfigure.paper_style():
        assert matplotlib.rcParams["font.size"] == 9
    assert matplotlib.rcParams["font.size"] == before


def test_a_partial_surface_in_the_bisection_order_draws_its_whole_coarse_grid():
    """51x51 stopped in the third level: the lattice is the whole 3x3 grid of the first two levels."""
    from losslandscape.numerics.grid import coarse_to_fine, levels

    x = y = np.linspace(-1, 1, 51)
    order = coarse_to_fine((51, 51))
    first_two = int((levels((51, 51)) <= 1).sum())
    assert first_two == 9
    z = np.full(51 * 51, np.nan)
    z[order[:first_two + 5]] = 1.0  # and a few points of the next level
    rows, cols = ranges.surface_lattice(x, y, z.reshape(51, 51))
    assert rows.tolist() == [0, 25, 50] and cols.tolist() == [0, 25, 50]


def test_summary_does_not_call_another_point_the_centre(tmp_path):
    from losslandscape.render.summary import format_summary

    x = np.linspace(-1, 1, 4)  # no point at 0
    L = np.add.outer(x**2, x**2)
    path = write_surface(tmp_path / "off.h5", x, x, {"train_loss": L, "train_acc": 100 - L},
                         {"train_done": np.ones_like(L)})
    summary = summarize(path)
    assert summary["splits"]["train"]["centre"]["on_grid"] is False
    text = format_summary(summary)
    assert "\n  centre (" not in text and "is not on this grid" in text and "nearest (0.3333, 0.3333)" in text
    on = write_surface(tmp_path / "on.h5", PX, PY, {"train_loss": paraboloid()},
                       {"train_done": np.ones_like(paraboloid())})
    assert "\n  centre (0, 0)" in format_summary(summarize(on))


def test_summary_leaves_out_a_split_no_run_asked_for(tmp_path):
    # the writer allocates both splits; a run on the train split leaves the test split NaN and not done
    L = paraboloid()
    nan = np.full_like(L, np.nan)
    values = {"train_loss": L, "train_acc": 100 - L, "test_loss": nan, "test_acc": nan}
    done = {"train_done": np.ones_like(L), "test_done": np.zeros_like(L)}
    spec = {"model": {"name": "resnet56"}, "data": {"splits": ["train"]}}
    path = write_surface(tmp_path / "train.h5", PX, PY, values, done, spec=spec)
    assert list(summarize(path)["splits"]) == ["train"]
    # a split asked for and not begun yet (a job still running) is shown, at 0% done
    both = write_surface(tmp_path / "both.h5", PX, PY, values, done,
                         spec={**spec, "data": {"splits": ["train", "test"]}})
    summary = summarize(both)
    assert list(summary["splits"]) == ["train", "test"] and summary["splits"]["test"]["fraction_done"] == 0


# ---------------------------------------------------------------- Hessian: ratio map, eigenvalue maps, spectrum

# What the `hessian` verb writes (hessmap.py), by hand: the maps on the paraboloid's grid, their
# ratio |min/max| crossing the paper's 0.5 at the corners, and a spectrum at the centre.
EIG_SETTINGS = {"split": "train", "samples": 1000, "params": "all", "tol": 1e-3}
CENTRE = {"top_eigenvalues": [2.9, 1.1, 0.7], "min_eigenvalue": -0.05, "ratio_min_max": 0.05 / 2.9, "trace": 5.2,
          "trace_stderr": 0.3, "parameters": 11274, "split": "train", "samples": 0, "params": "all",
          "hutchinson_samples": 100, "tol": 1e-3}


def eig_maps() -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.meshgrid(PX, PY)
    return 2 + X**2 + Y**2, 1.5 * X * Y - 0.01


def spectral_density() -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(-0.5, 3.5, 200)
    density = np.exp(-0.5 * (grid / 0.05) ** 2) + 1e-3 * np.exp(-0.5 * ((grid - 2.9) / 0.05) ** 2)
    return grid, density / np.trapezoid(density, grid)


def add_hessian(path, max_eig=None, min_eig=None, done=None, settings=None, centre=None, attrs=None):
    """Add to a surface file what `hessian` (maps) and `hessian --centre` (centre) store."""
    with h5py.File(path, "a") as f:
        if max_eig is not None:
            f["max_eig"] = np.asarray(max_eig, dtype=np.float64)
            f["min_eig"] = np.asarray(min_eig, dtype=np.float64)
            f["eig_done"] = np.asarray(done, dtype=np.uint8)
            for k, v in (settings or EIG_SETTINGS).items():
                f.attrs[f"hessian_{k}"] = v
        if centre is not None:
            g = f.create_group("hessian_centre")
            g["top_eigenvalues"] = np.asarray(centre["top_eigenvalues"], dtype=np.float64)
            g["density_grid"], g["density"] = spectral_density()
            for k, v in centre.items():
                if k != "top_eigenvalues":
                    g.attrs[k] = v
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return Path(path)


# The partial map: the first pass (every 4th point of each axis) and the centre, (0, 0).
PARTIAL_EIG = np.zeros((PY.size, PX.size), dtype=np.uint8)
PARTIAL_EIG[::4, ::4] = 1
PARTIAL_EIG[7, 10] = 1


@pytest.fixture(scope="module")
def hessian_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hessian")
    L = paraboloid()
    ones = np.ones_like(L)
    values = {"train_loss": L, "train_acc": 100 - 10 * L, "test_loss": 1.1 * L + 0.05, "test_acc": 97 - 10 * L}
    flags = {"train_done": ones, "test_done": ones}
    mx, mn = eig_maps()
    out = {}
    out["maps"] = add_hessian(write_surface(d / "maps.h5", PX, PY, values, flags), mx, mn, ones, centre=CENTRE)
    # Partial, of the test split; the stale values of points not done must never show.
    done = PARTIAL_EIG
    out["partial"] = add_hessian(
        write_surface(d / "partial.h5", PX, PY, values, flags), np.where(done == 1, mx, 123.0),
        np.where(done == 1, mn, 123.0), done, {"split": "test", "samples": 0, "params": "weights", "tol": 1e-3})
    # Maps created, nothing computed yet (NaN, as the verb allocates them).
    nan = np.full_like(L, np.nan)
    out["none_done"] = add_hessian(write_surface(d / "none_done.h5", PX, PY, values, flags), nan, nan,
                                   np.zeros_like(done))
    return out


def ratio_of(fig):
    """The ratio figure's map axes, its QuadMesh and its ContourSets."""
    from matplotlib.collections import QuadMesh
    from matplotlib.contour import ContourSet

    ax = fig.axes[0]
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return ax, mesh, [c for c in ax.collections if isinstance(c, ContourSet)]


def test_load_hessian_maps_and_centre_spectrum(hessian_files, files):
    mx, mn = eig_maps()
    s = load_surface(hessian_files["maps"])
    assert set(s.eig) == {"max", "min"} and s.eig_fraction_done == 1.0
    assert np.array_equal(s.eig["max"], mx) and np.array_equal(s.eig["min"], mn)
    assert np.allclose(s.eig_ratio, np.abs(mn / mx))
    assert s.eig_settings == EIG_SETTINGS
    c = s.centre_spectrum
    assert c["top_eigenvalues"] == CENTRE["top_eigenvalues"] and c["min_eigenvalue"] == -0.05
    assert (c["trace"], c["trace_stderr"], c["parameters"], c["split"]) == (5.2, 0.3, 11274, "train")
    grid, density = spectral_density()
    assert np.array_equal(c["density_grid"], grid) and np.array_equal(c["density"], density)
    # Partial: NaN where eig_done is not 1, whatever the datasets hold there.
    p = load_surface(hessian_files["partial"])
    done = PARTIAL_EIG == 1
    for key, full in (("max", mx), ("min", mn)):
        assert np.isnan(p.eig[key][~done]).all() and np.array_equal(p.eig[key][done], full[done])
    assert np.array_equal(p.eig_computed, done) and p.eig_fraction_done == pytest.approx(done.mean())
    assert p.centre_spectrum is None and p.eig_settings["split"] == "test"
    # Files without them: as before.
    for path in (files["para"], files["orig"], files["curve"]):
        s = load_surface(path)
        assert s.eig is None and s.eig_ratio is None and s.centre_spectrum is None and s.eig_settings == {}


def test_ratio_map_is_the_papers_figure_8(hessian_files, tmp_path):
    from matplotlib.colors import Normalize

    mx, mn = eig_maps()
    ratio = np.abs(mn / mx)
    assert ratio.max() > 0.5  # the corners are past the paper's colour scale
    figs = draw([hessian_files["maps"]], tmp_path, kinds=["ratio", "contour"], split="train")
    assert set(figs) == {"maps_train_ratio.png", "maps_train_loss_contour.png"}
    assert_png(tmp_path / "maps_train_ratio.png")
    fig = figs["maps_train_ratio.png"]
    ax, mesh, contours = ratio_of(fig)
    # The heat map: |min/max| at every point, on a linear colour scale of 0 to 0.5, an arrow for more.
    assert type(mesh.norm) is Normalize and (mesh.norm.vmin, mesh.norm.vmax) == (0.0, 0.5)
    assert np.allclose(np.ma.getdata(mesh.get_array()).reshape(ratio.shape), ratio)
    cbar = fig.axes[1]
    assert cbar.get_ylim() == (0.0, 0.5) and cbar.get_ylabel() == r"$|\lambda_{\min} / \lambda_{\max}|$"
    assert mesh.colorbar.extend == "max"
    # The loss of the Hessian's split as thin white lines over it, at the contour view's levels.
    (lines,) = contours
    assert lines.get_gid() == "train loss contours" and lines.get_zorder() > mesh.get_zorder()
    assert max(lines.get_linewidths()) < 1 and tuple(lines.get_edgecolor()[0][:3]) == (1.0, 1.0, 1.0)
    (reference,) = [c for c in figs["maps_train_loss_contour.png"].axes[0].collections if hasattr(c, "levels")]
    assert list(lines.levels) == list(reference.levels) and len(lines.levels) >= 5
    # The same lines: those of the levels without labels (every other one) are unbroken in both.
    unlabelled = [(a.vertices, b.vertices) for a, b in zip(lines.get_paths()[1::2], reference.get_paths()[1::2])]
    assert sum(len(a) for a, _ in unlabelled) > 50 and all(np.array_equal(a, b) for a, b in unlabelled)
    # The marks, the legend and the title (the split, samples, params of the Hessian).
    assert marks(fig, "trained model (0, 0)") == [(0.0, 0.0)]
    assert {"trained model (0, 0)", "train loss (contour lines)"} <= set(legend_texts(fig))
    assert "not computed yet (blank)" not in legend_texts(fig)
    assert ax.get_title().split("\n") == [r"resnet56: $|\lambda_{\min} / \lambda_{\max}|$",
                                          "Hessian of the mean train loss, 1,000 samples, all parameters"]
    # --vmin/--vmax set the colour scale.
    (fig,) = draw([hessian_files["maps"]], tmp_path / "v", kinds=["ratio"], vmin=0.1, vmax=0.3).values()
    _, mesh, _ = ratio_of(fig)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0.1, 0.3) and mesh.colorbar.extend == "both"
    # One end beyond the other's default moves that one (as for the loss); both inverted is refused.
    (fig,) = draw([hessian_files["maps"]], tmp_path / "v2", kinds=["ratio"], vmin=0.6).values()
    assert (ratio_of(fig)[1].norm.vmin, ratio_of(fig)[1].norm.vmax) == (0.6, 1.1)
    with pytest.raises(UserError, match="--vmin 0.3 is not below --vmax 0.2"):
        render([hessian_files["maps"]], tmp_path, kinds=["ratio"], vmin=0.3, vmax=0.2)


def test_partial_ratio_map_is_blank_where_not_computed(hessian_files, tmp_path):
    mx, mn = eig_maps()
    done = PARTIAL_EIG == 1
    (fig,) = draw([hessian_files["partial"]], tmp_path, kinds=["ratio"]).values()
    assert_png(tmp_path / "partial_test_ratio.png")
    ax, mesh, contours = ratio_of(fig)
    rows, cols = np.flatnonzero(done.any(axis=1)), np.flatnonzero(done.any(axis=0))
    cells = mesh.get_array()
    assert cells.shape == (rows.size, cols.size)  # one cell per computed row and column
    assert np.array_equal(~np.ma.getmaskarray(cells), done[np.ix_(rows, cols)])  # blank: not computed
    assert np.allclose(cells.compressed(), np.abs(mn / mx)[done])  # never the stale 123
    pct = round(100 * done.mean())
    assert ax.get_title().split("\n") == [rf"resnet56: $|\lambda_{{\min}} / \lambda_{{\max}}|$ ({pct}% done)",
                                          "Hessian of the mean test loss, all samples, weight tensors only"]
    assert "not computed yet (blank)" in legend_texts(fig) and marks(fig, "trained model (0, 0)") == [(0.0, 0.0)]
    # The lines are the loss of the Hessian's split, test here.
    (lines,) = contours
    assert lines.get_gid() == "test loss contours" and "test loss (contour lines)" in legend_texts(fig)


def test_eigenvalue_maps_side_by_side(hessian_files, tmp_path):
    mx, mn = eig_maps()
    (fig,) = draw([hessian_files["maps"]], tmp_path, kinds=["eigenvalues"]).values()
    assert_png(tmp_path / "maps_train_eigenvalues.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [r"$\lambda_{\max}$", r"$\lambda_{\min}$"]
    (big,), (small,) = ([c for c in ax.collections if c.get_array() is not None] for ax in panels)
    assert np.allclose(np.ma.getdata(big.get_array()).reshape(mx.shape), mx)
    assert np.allclose(np.ma.getdata(small.get_array()).reshape(mn.shape), mn)
    assert (big.norm.vmin, big.norm.vmax) == pytest.approx((mx.min(), mx.max())) and big.cmap.name == "viridis"
    # min_eig: a diverging colour map centred at 0.
    assert small.cmap.name == "RdBu_r" and small.norm.vmin == -small.norm.vmax == pytest.approx(-np.abs(mn).max())
    assert len(marks(fig, "trained model (0, 0)")) == 2
    head = fig.get_suptitle().split("\n")
    assert head[:2] == ["resnet56: Hessian eigenvalues",
                        "Hessian of the mean train loss, 1,000 samples, all parameters"]
    (fig,) = draw([hessian_files["partial"]], tmp_path, kinds=["eigenvalues"]).values()
    assert f"({round(100 * PARTIAL_EIG.mean())}% done)" in fig.get_suptitle()
    assert "not computed yet (blank)" in legend_texts(fig)


def test_spectrum_at_the_centre(hessian_files, tmp_path):
    (fig,) = draw([hessian_files["maps"]], tmp_path, kinds=["spectrum"]).values()
    assert_png(tmp_path / "maps_train_spectrum.png")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "eigenvalue"
    grid, density = spectral_density()
    (curve,) = [ln for ln in ax.lines if ln.get_label() == "spectral density"]
    assert np.allclose(curve.get_xdata(), grid) and np.allclose(curve.get_ydata(), density)
    vertical = [ln for ln in ax.lines if ln is not curve]
    xs = {ln.get_linestyle(): [] for ln in vertical}
    for ln in vertical:
        xs[ln.get_linestyle()].append(ln.get_xdata()[0])
    assert sorted(xs["--"]) == sorted(CENTRE["top_eigenvalues"]) and xs[":"] == [-0.05]
    texts = legend_texts(fig)
    assert {"top eigenvalues: 2.9, 1.1, 0.7", "min eigenvalue: -0.05",
            "trace = 5.2 ± 0.3 (Hutchinson, 100 probes)", "|min / max| = 0.01724"} <= set(texts)
    assert ax.get_title().split("\n")[:2] == ["resnet56: Hessian spectrum at the trained model",
                                             "Hessian of the mean train loss, all samples, all parameters (11,274)"]


def test_hessian_views_by_default_and_when_asked(hessian_files, files, tmp_path):
    written = render([hessian_files["maps"]], tmp_path)
    names = {p.name for p in written}
    assert {"maps_train_ratio.png", "maps_train_eigenvalues.png", "maps_train_spectrum.png"} <= names
    assert len(written) == 8 + 3 + 3  # the loss views of both splits, vtp each, html; and the Hessian's
    # --split test: the loss views of test only, none of the train split's Hessian.
    names = {p.name for p in render([hessian_files["maps"]], tmp_path / "test", split="test")}
    assert not [n for n in names if n.endswith(("ratio.png", "eigenvalues.png", "spectrum.png"))]
    with pytest.raises(UserError, match="of the train split"):
        render([hessian_files["maps"]], tmp_path, kinds=["ratio"], split="test")
    # Maps with nothing computed yet: not drawn by default; refused when asked.
    names = {p.name for p in render([hessian_files["none_done"]], tmp_path / "none", split="train")}
    assert not [n for n in names if "ratio" in n or "eigenvalues" in n]
    with pytest.raises(UserError, match="nothing is computed yet for the Hessian eigenvalue maps"):
        render([hessian_files["none_done"]], tmp_path, kinds=["ratio"])
    # Files without them: one line saying what is missing and how to compute it.
    for kind, words in (("ratio", "has no Hessian eigenvalue maps"), ("eigenvalues", "has no Hessian eigenvalue"),
                        ("spectrum", "has no Hessian spectrum at the centre")):
        with pytest.raises(UserError, match=words) as e:
            render([files["para"]], tmp_path / "no", kinds=[kind])
        assert "\n" not in str(e.value) and "losslandscape hessian" in str(e.value)
        with pytest.raises(UserError, match="does not fit"):
            render([files["curve"]], tmp_path / "no", kinds=[kind])
    assert not (tmp_path / "no").exists()
    # The CLI knows the kinds.
    parser = argparse.ArgumentParser()
    render_cli.add_render_arguments(parser)
    assert parser.parse_args(["s.h5", "--kind", "ratio,eigenvalues", "--kind", "spectrum"]).kinds == [
        ["ratio", "eigenvalues"], ["spectrum"]]


def test_html_offers_the_hessian_maps(hessian_files, tmp_path):
    mx, mn = eig_maps()
    (page,) = render([hessian_files["maps"]], tmp_path, kinds=["html"])
    fig = page_figure(page)
    series = fig["layout"]["meta"]["series"]
    assert [s["name"] for s in series][-3:] == ["hessian_ratio", "max_eig", "min_eig"]
    labels = [b["label"] for b in menus(fig)["series"]["buttons"]]
    assert labels[-3:] == ["|min/max| (Hessian)", "max eigenvalue (Hessian)", "min eigenvalue (Hessian)"]
    assert labels[0] == "train loss"  # the page still starts on the loss
    # The ratio: a heat map on 0..0.5 (no 3-D surface), the loss's white contour lines, the trained model.
    assert {t["meta"]["part"] for t in traces(fig, "hessian_ratio")} == {"map", "lines", "trained"}
    (heat,) = traces(fig, "hessian_ratio", "linear", "map")
    assert heat["type"] == "heatmap" and (heat["zmin"], heat["zmax"]) == (0.0, 0.5)
    assert np.allclose(array(heat["z"]), np.abs(mn / mx), rtol=1e-6)
    assert np.allclose(array(heat["x"]), PX) and np.allclose(array(heat["y"]), PY)
    assert heat["colorbar"]["title"]["text"] == "|λ<sub>min</sub>/λ<sub>max</sub>|"
    (lines,) = traces(fig, "hessian_ratio", "linear", "lines")
    assert lines["type"] == "contour" and lines["contours"]["coloring"] == "none"
    assert lines["name"] == "train loss (white contour lines)"
    assert np.allclose(10 ** array(lines["z"]), np.maximum(paraboloid(), 0.15**2), rtol=1e-5)  # log10 loss
    (trained,) = traces(fig, "hessian_ratio", "", "trained")
    assert (trained["x"], trained["y"]) == ([0.0], [0.0])
    # The eigenvalue maps; min_eig on a diverging scale centred at 0.
    (big,) = traces(fig, "max_eig", "linear", "map")
    (small,) = traces(fig, "min_eig", "linear", "map")
    assert np.allclose(array(big["z"]), mx) and np.allclose(array(small["z"]), mn, atol=1e-6)
    assert small["zmid"] == 0 and small["zmin"] == -small["zmax"] == pytest.approx(-np.abs(mn).max())
    # RdBu (red first), reversed: negative blue, positive red.
    assert small["reversescale"] is True and small["colorscale"][0][1] == "rgb(103,0,31)"
    # Its button: only its traces, the 3-D view's axes hidden, its title; the loss's button shows them again.
    buttons = {b["label"]: b["args"] for b in menus(fig)["series"]["buttons"]}
    restyle, relayout = buttons["|min/max| (Hessian)"]
    assert {t["meta"]["series"] for t, v in zip(fig["data"], restyle["visible"]) if v} == {"hessian_ratio"}
    assert relayout["scene.xaxis.visible"] is False and relayout["scene.zaxis.visible"] is False
    assert relayout["title.text"].split("<br>")[:2] == [
        "resnet56: |λ<sub>min</sub>/λ<sub>max</sub>|",
        "Hessian of the mean train loss, 1,000 samples, all parameters"]
    assert buttons["train loss"][1]["scene.xaxis.visible"] is True
    # --vmin/--vmax: the ratio's colour scale.
    (page,) = render([hessian_files["maps"]], tmp_path / "v", kinds=["html"], vmin=0.1, vmax=0.3)
    (heat,) = traces(page_figure(page), "hessian_ratio", "linear", "map")
    assert (heat["zmin"], heat["zmax"]) == (0.1, 0.3)
    # Partial: blank (NaN) where not computed, the fraction in the title, the test loss's lines.
    (page,) = render([hessian_files["partial"]], tmp_path, kinds=["html"])
    fig = page_figure(page)
    (heat,) = traces(fig, "hessian_ratio", "linear", "map")
    z = array(heat["z"])
    done = PARTIAL_EIG == 1
    rows, cols = np.flatnonzero(done.any(axis=1)), np.flatnonzero(done.any(axis=0))
    assert np.array_equal(~np.isnan(z), done[np.ix_(rows, cols)]) and np.nanmax(z) < 1
    assert traces(fig, "hessian_ratio", "linear", "lines")[0]["name"] == "test loss (white contour lines)"
    assert [t["name"] for t in traces(fig, "hessian_ratio", "", "blank")] == ["not computed yet (blank)"]
    title = {b["label"]: b["args"][1]["title.text"] for b in menus(fig)["series"]["buttons"]}
    assert f"({round(100 * done.mean())}% done)" in title["|min/max| (Hessian)"]
    # A comparison page shows what the files share: no maps.
    written = render([hessian_files["maps"], hessian_files["partial"]], tmp_path / "cmp", kinds=["html"])
    assert not traces(page_figure(written[-1]), "hessian_ratio")


@pytest.mark.slow
def test_html_hessian_buttons_in_headless_chromium(chromium, hessian_files, tmp_path):
    (page,) = render([hessian_files["partial"]], tmp_path, kinds=["html"], split="test")
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("<head>", "<head>" + PAGE_CHECK, 1))
    proc = run_chromium(chromium, checked, tmp_path / "profile", "--virtual-time-budget=30000", "--dump-dom")
    reports = [(m[1], json.loads(m[2])) for m in re.finditer(r'"PAGECHECK (\w+) (.*)", source: ', proc.stderr)]
    assert "error" not in [what for what, _ in reports], [data for what, data in reports if what == "error"]
    states = {s["click"]: s for what, s in reports if what == "state"}
    for label, name in (("|min/max| (Hessian)", "hessian_ratio"), ("min eigenvalue (Hessian)", "min_eig")):
        state = states[label]
        assert {t["series"] for t in state["shown"]} == {name} and state["scene"] is False, state
        assert state["title"].startswith("resnet56: ") and "% done)" in state["title"]
    assert states["test loss"]["scene"] is True  # back on a loss: the 3-D view again


def test_summary_shows_the_hessian(hessian_files, files, capsys):
    mx, mn = eig_maps()
    ratio = np.abs(mn / mx)
    s = summarize(hessian_files["maps"])
    json.dumps(s, allow_nan=False)
    m, c = s["hessian"]["maps"], s["hessian"]["centre"]
    j, i = np.unravel_index(np.argmax(ratio), ratio.shape)
    assert m["fraction_done"] == 1.0 and m["max_ratio"] == pytest.approx(ratio.max())
    assert m["max_ratio_at"] == {"x": pytest.approx(PX[i]), "y": pytest.approx(PY[j])}
    assert (m["split"], m["samples"], m["params"]) == ("train", 1000, "all")
    assert m["centre"] == {"x": 0.0, "y": 0.0, "max_eig": 2.0, "min_eig": -0.01, "ratio": pytest.approx(0.005)}
    assert c["top_eigenvalues"] == [2.9, 1.1, 0.7] and c["min_eigenvalue"] == -0.05
    assert c["ratio_min_max"] == pytest.approx(0.05 / 2.9) and (c["trace"], c["trace_stderr"]) == (5.2, 0.3)
    # The text.
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="verb")
    render_cli.add_summary_arguments(sub.add_parser("summary"))
    assert render_cli.run_summary(parser.parse_args(["summary", str(hessian_files["maps"])])) == 0
    text = capsys.readouterr().out
    assert "[hessian maps] Hessian of the mean train loss, 1,000 samples, all parameters: 100.0% done" in text
    assert f"max |min/max| {ratio.max():.4g} at ({PX[i]:.4g}, {PY[j]:.4g})" in text
    assert "[hessian at the centre] Hessian of the mean train loss, all samples, all parameters (11,274)" in text
    assert "top eigenvalues   2.9, 1.1, 0.7" in text and "min eigenvalue    -0.05" in text
    assert "|min/max|         0.01724" in text and "trace             5.2 +- 0.3 (Hutchinson, 100 probes)" in text
    assert render_cli.run_summary(parser.parse_args(["summary", str(hessian_files["partial"]), "--json"])) == 0
    p = json.loads(capsys.readouterr().out)["hessian"]
    done = PARTIAL_EIG == 1
    assert set(p) == {"maps"} and p["maps"]["fraction_done"] == pytest.approx(done.mean())
    assert p["maps"]["points_done"] == done.sum() and p["maps"]["max_ratio"] == pytest.approx(ratio[done].max())
    assert "% done (25 of 315 points)" in format_summary_of(hessian_files["partial"])
    # Nothing computed yet; no maps at all.
    n = summarize(hessian_files["none_done"])["hessian"]["maps"]
    assert (n["fraction_done"], n["max_ratio"], n["max_ratio_at"]) == (0.0, None, None)
    assert "hessian" not in summarize(files["para"]) and "[hessian" not in format_summary_of(files["para"])


def format_summary_of(path) -> str:
    from losslandscape.render.summary import format_summary

    return format_summary(summarize(path))


def test_axes_of_hessian_directions_name_their_eigenvalues(tmp_path):
    values, done = {"train_loss": paraboloid()}, {"train_done": np.ones_like(paraboloid())}
    spec = {"model": {"name": "resnet56", "checkpoint": "r.pt"}, "directions": {"kind": "hessian", "which": "maxmin"}}
    path = add_hessian(write_surface(tmp_path / "eig.h5", PX, PY, values, done, spec=spec),
                       attrs={"hessian_which": "maxmin", "hessian_eigenvalues": [2.9, -0.05]})
    for fig in draw([path], tmp_path, kinds=["contour", "heatmap"]).values():
        ax = fig.axes[0]
        assert ax.get_xlabel() == r"eigenvector of $\lambda_{\max}$ = 2.9"
        assert ax.get_ylabel() == r"eigenvector of $\lambda_{\min}$ = -0.05"
        assert ax.get_title().endswith("\nr.pt; Hessian eigenvector directions")
    layout = page_figure(render([path], tmp_path, kinds=["html"])[0])["layout"]
    assert layout["xaxis"]["title"]["text"] == layout["scene"]["xaxis"]["title"]["text"] == \
        "eigenvector of λ<sub>max</sub> = 2.9"
    assert layout["yaxis"]["title"]["text"] == "eigenvector of λ<sub>min</sub> = -0.05"
    top2 = add_hessian(write_surface(tmp_path / "top2.h5", PX, PY, values, done, spec=spec),
                       attrs={"hessian_which": "top2", "hessian_eigenvalues": [2.9, 1.25]})
    (fig,) = draw([top2], tmp_path, kinds=["filled"]).values()
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == (
        r"eigenvector of $\lambda_{1}$ = 2.9", r"eigenvector of $\lambda_{2}$ = 1.25")


# ---------------------------------------------------------------- PCA surfaces: training paths


# The run's own path ends at the final model (0, 0); its last segment runs along the grid row
# y = 0, where the bilinear height on the surface is the linear interpolation along the row.
RUN_X = np.array([0.9, 0.75, 0.62, 0.6, 0.0])
RUN_Y = np.array([0.8, 0.4, 0.13, 0.0, 0.0])
RUN_ERR = np.array([0.06, 0.05, 0.03, 0.0155, 0.0])  # mean 0.0311: "3.1%"
# A second run projected on the plane; it starts outside the grid (x = -2.5 < -1.5).
ALSO_X = np.array([-2.5, -1.2, -0.6, -0.3])
ALSO_Y = np.array([1.0, 0.6, 0.2, -0.1])
ALSO_ERR = np.array([0.08, 0.06, 0.04, 0.02])  # mean 0.05: "5.0%"
PCA_SPEC = {"model": {"name": "resnet20", "checkpoint": "out/train/model_8.pt"},
            "directions": {"kind": "pca", "checkpoints": "out/train/model_*.pt", "also": ["out/seed1/ckpt_*.pt"]}}
RUN_LABEL = "run: model_*.pt (mean error 3.1%)"
ALSO_LABEL = "ckpt_*.pt (mean error 5.0%; 1 of 4 checkpoints outside the grid)"


def add_paths(path, runs=None, ratio=(0.872, 0.091), vlen=True):
    """Add what `trajectory` stores for a PCA surface: each run's x, y, error and checkpoint names
    (variable-length UTF-8 strings, or fixed-length bytes as parallel HDF5 writes them), its glob
    as the attribute `pattern`; the explained variance ratio of PC1 and PC2."""
    if runs is None:
        runs = [("out/train/model_*.pt", RUN_X, RUN_Y, RUN_ERR, [f"model_{2 * i}.pt" for i in range(5)]),
                ("out/seed1/ckpt_*.pt", ALSO_X, ALSO_Y, ALSO_ERR, [f"ckpt_{i}.pt" for i in range(4)])]
    with h5py.File(path, "a") as f:
        for k, (pattern, x, y, err, names) in enumerate(runs):
            g = f.require_group("trajectory" if k == 0 else f"trajectory/also/{k - 1}")
            g["x"], g["y"], g["error"] = (np.asarray(a, dtype=np.float64) for a in (x, y, err))
            if vlen:
                g.create_dataset("checkpoints", data=names, dtype=h5py.string_dtype("utf-8"))
            else:
                g["checkpoints"] = np.array([n.encode() for n in names])
            g.attrs["pattern"] = pattern
        if ratio is not None:
            f.attrs["explained_variance_ratio"] = np.asarray(ratio, dtype=np.float64)
    return Path(path)


def pca_loss() -> np.ndarray:
    return paraboloid() + 0.05  # 0.05 to 6.22: more than two decades, so drawn on a log scale


# The partial PCA surface: the coarse pass, every 4th point of each axis.
PCA_PARTIAL = np.zeros((PY.size, PX.size), dtype=np.uint8)
PCA_PARTIAL[::4, ::4] = 1


@pytest.fixture(scope="module")
def pca_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pca")
    L = pca_loss()
    ones = np.ones_like(L)
    out = {}
    values = {"train_loss": L, "train_acc": 100 - 10 * L, "test_loss": L + 0.1, "test_acc": 95 - 10 * L}
    out["pca"] = add_paths(write_surface(d / "pca.h5", PX, PY, values, {"train_done": ones, "test_done": ones},
                                         spec=PCA_SPEC))
    stale = np.where(PCA_PARTIAL == 1, L, 123.0)
    out["partial"] = add_paths(write_surface(d / "pcapart.h5", PX, PY, {"train_loss": stale},
                                             {"train_done": PCA_PARTIAL}, spec=PCA_SPEC), vlen=False)
    nothing = np.full_like(L, np.nan)
    out["empty"] = add_paths(write_surface(d / "pcaempty.h5", PX, PY, {"train_loss": nothing, "train_acc": nothing},
                                           {"train_done": np.zeros_like(PCA_PARTIAL)}, spec=PCA_SPEC))
    return out


def path_traces(fig: dict, series: str | None = None, scale: str | None = None, part: str = "path") -> list[dict]:
    """A page's traces of one part of the paths, in run order (the run's own first)."""
    return sorted(traces(fig, series, scale, part), key=lambda t: t["meta"]["run"])


def artists(fig, gid: str) -> list:
    """The lines of a figure (any axes) with this gid."""
    return [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == gid]


def line_data(line) -> tuple[np.ndarray, ...]:
    data = line.get_data_3d() if hasattr(line, "get_data_3d") else line.get_data()
    return tuple(np.asarray(d, dtype=float) for d in data)


def test_reader_exposes_the_trajectories(pca_files, files, tmp_path):
    for key in ("pca", "partial"):  # variable-length strings; fixed-length bytes (as parallel HDF5 writes)
        s = load_surface(pca_files[key])
        assert [t["name"] for t in s.trajectories] == ["run: model_*.pt", "ckpt_*.pt"]
        run, also = s.trajectories
        assert set(run) >= {"name", "x", "y", "error", "checkpoints"}
        assert np.array_equal(run["x"], RUN_X) and np.array_equal(run["y"], RUN_Y)
        assert np.array_equal(run["error"], RUN_ERR) and run["x"].dtype == np.float64
        assert run["checkpoints"] == ["model_0.pt", "model_2.pt", "model_4.pt", "model_6.pt", "model_8.pt"]
        assert also["checkpoints"] == ["ckpt_0.pt", "ckpt_1.pt", "ckpt_2.pt", "ckpt_3.pt"]
        assert np.array_equal(also["x"], ALSO_X) and also["pattern"] == "out/seed1/ckpt_*.pt"
        assert s.explained_variance_ratio.tolist() == [0.872, 0.091]
    # Files without: nothing.
    s = load_surface(files["para"])
    assert s.trajectories == [] and s.explained_variance_ratio is None
    # Runs whose globs share a file name are told apart by their folders.
    same = add_paths(write_surface(tmp_path / "same.h5", PX, PY, {"train_loss": pca_loss()}, spec=PCA_SPEC), runs=[
        ("out/a/model_*.pt", RUN_X, RUN_Y, RUN_ERR, ["m"] * 5), ("out/b/model_*.pt", ALSO_X, ALSO_Y, ALSO_ERR, ["m"] * 4)])
    assert [t["name"] for t in load_surface(same).trajectories] == ["run: a/model_*.pt", "b/model_*.pt"]
    # A broken path is one line naming the file and the dataset.
    bad = add_paths(write_surface(tmp_path / "bad.h5", PX, PY, {"train_loss": pca_loss()}, spec=PCA_SPEC), runs=[
        ("m_*.pt", RUN_X, RUN_Y[:3], RUN_ERR, ["m"] * 5)])
    with pytest.raises(UserError, match="trajectory/y has 3 values for the 5") as e:
        load_surface(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_paths_on_every_2d_view(pca_files, tmp_path):
    from matplotlib.colors import to_hex

    figs = draw([pca_files["pca"]], tmp_path, kinds=["contour", "filled", "heatmap", "surface3d"], split="train")
    assert len(figs) == 4
    for name, fig in figs.items():
        ax = fig.axes[0]
        # The axes: PC1 and PC2 with their share of the variance; they stay at the grid (clipped).
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1 (87.2%)", "PC2 (9.1%)"), name
        if "surface3d" not in name:  # (a 3-D box has mplot3d's own margins)
            assert ax.get_xlim()[0] >= PX.min() - 0.15 and ax.get_xlim()[1] <= PX.max() + 0.15, name
        # The legend: each run with its mean projection error, and the start and end markers.
        texts = legend_texts(fig)
        assert {RUN_LABEL, ALSO_LABEL, "start: first checkpoint", "end: last checkpoint"} <= set(texts), (name, texts)
        (run,), (also,) = artists(fig, "path 0"), artists(fig, "path 1")
        assert run.get_label() == RUN_LABEL and also.get_label() == ALSO_LABEL
        assert to_hex(run.get_color()) != to_hex(also.get_color())  # a colour per run
        assert run.get_zorder() > also.get_zorder()  # the run's own path on top
        if "surface3d" in name:
            continue
        # 2-D: the line and the checkpoints' dots through every checkpoint, in order; start and end marked.
        for k, (x, y) in enumerate(((RUN_X, RUN_Y), (ALSO_X, ALSO_Y))):
            (line,), (dots,) = artists(fig, f"path {k}"), artists(fig, f"path {k} checkpoints")
            for a in (line, dots):
                assert np.array_equal(line_data(a)[0], x) and np.array_equal(line_data(a)[1], y), name
            (start,), (end,) = artists(fig, f"path {k} start"), artists(fig, f"path {k} end")
            assert [tuple(d) for d in line_data(start)] == [(x[0],), (y[0],)]
            assert [tuple(d) for d in line_data(end)] == [(x[-1],), (y[-1],)]
            assert start.get_marker() != end.get_marker() != dots.get_marker()
            assert to_hex(start.get_markeredgecolor()) == to_hex(end.get_markerfacecolor()) == to_hex(line.get_color())

    # 3-D: the path lies on the surface (log10 heights: the loss spans two decades).
    fig = figs["pca_train_loss_surface3d.png"]
    assert fig.axes[0].get_xlabel() == "PC1 (87.2%)"
    heights = np.log10(pca_loss())
    (dots,) = artists(fig, "path 0 checkpoints")
    x, y, z = line_data(dots)
    assert np.array_equal(x, RUN_X) and np.array_equal(y, RUN_Y)
    i, j = np.searchsorted(PX, 0.9 - 1e-9), np.searchsorted(PY, 0.8 - 1e-9)  # the first checkpoint is a grid point
    assert z[0] == pytest.approx(heights[j, i]) and z[-1] == pytest.approx(heights[7, 10])
    # Between checkpoints the line follows the surface: along the row y = 0, the row's heights, interpolated.
    lx, ly, lz = line_data(artists(fig, "path 0")[0])
    row = np.isclose(ly, 0.0) & (lx < 0.6 - 1e-9) & (lx > 1e-9)
    assert row.sum() >= 10 and np.allclose(lz[row], np.interp(lx[row], PX, heights[7]))
    # The second run starts outside the grid: no start marker there, the line breaks; its dots are the rest.
    lx, ly, lz = line_data(artists(fig, "path 1")[0])
    assert np.isnan(lz).any() and np.nanmin(lx) >= PX.min() - 1e-9
    assert not artists(fig, "path 1 start") and len(line_data(artists(fig, "path 1 checkpoints")[0])[0]) == 3
    # Side by side (compare): each panel's paths, named by its file.
    (fig,) = draw([pca_files["pca"], pca_files["pca"].with_name("pca.h5")], tmp_path, kinds=["compare"],
                  split="train").values()
    assert f"pca.h5: {RUN_LABEL}" in legend_texts(fig) and len(artists(fig, "path 0")) == 2


def test_html_draws_the_paths(pca_files, tmp_path):
    from losslandscape.render import html

    (page,) = render([pca_files["pca"]], tmp_path, kinds=["html"])
    fig = page_figure(page)
    layout = fig["layout"]
    assert layout["xaxis"]["title"]["text"] == layout["scene"]["xaxis"]["title"]["text"] == "PC1 (87.2%)"
    assert layout["yaxis"]["title"]["text"] == "PC2 (9.1%)"
    for series in ("train_loss", "train_acc", "test_loss", "test_acc"):
        lines = path_traces(fig, series, "")
        assert [t["name"] for t in lines] == [RUN_LABEL, ALSO_LABEL], series
        assert lines[0]["legendrank"] < lines[1]["legendrank"]  # the legend in run order
        assert lines[0].get("showlegend", True) is True and lines[0]["mode"] == "lines+markers"
        assert lines[0]["line"]["color"] != lines[1]["line"]["color"]
        for t, x, y in zip(lines, (RUN_X, ALSO_X), (RUN_Y, ALSO_Y)):
            assert np.array_equal(array(t["x"]), x) and np.array_equal(array(t["y"]), y)
            assert t["xaxis"] == "x" and "%{text}" in t["hovertemplate"]
        assert lines[0]["text"][0] == "model_0.pt" and lines[0]["customdata"][0] == "6.0%"
        (start,) = [t for t in traces(fig, series, "", "path-start") if t["meta"]["run"] == 0]
        (end,) = [t for t in traces(fig, series, "", "path-end") if t["meta"]["run"] == 0]
        assert (start["x"], start["y"], end["x"], end["y"]) == ([0.9], [0.8], [0.0], [0.0])
        assert start["marker"]["symbol"] != end["marker"]["symbol"]
        assert start["legendgroup"] == end["legendgroup"] == lines[0]["legendgroup"]  # hidden with their run
        names = [t["name"] for t in traces(fig, series, "") if t["meta"]["part"].startswith("path-legend")]
        assert names == ["start: first checkpoint", "end: last checkpoint"]
    # 3-D: on the surface as drawn, on each scale: log10 heights on the log one, lifted a little.
    zr = layout["scene"]["zaxis"]["range"]  # the first series' (train loss, log scale)
    lift = html.PATH_LIFT * (zr[1] - zr[0])
    (points,) = [t for t in traces(fig, "train_loss", "log", "path3d-points") if t["meta"]["run"] == 0]
    assert points["type"] == "scatter3d" and points["scene"] == "scene"
    assert array(points["z"])[0] == pytest.approx(np.log10(pca_loss()[11, 16]) + lift, rel=1e-5)
    (line,) = [t for t in traces(fig, "train_loss", "log", "path3d") if t["meta"]["run"] == 0]
    assert line["legendgroup"] == path_traces(fig, "train_loss", "")[0]["legendgroup"]
    (linear,) = [t for t in traces(fig, "train_loss", "linear", "path3d-points") if t["meta"]["run"] == 0]
    lift_linear = html.PATH_LIFT * ((pca_loss() + 0.1).max() - pca_loss().min())  # train and test: one range
    assert array(linear["z"])[0] == pytest.approx(pca_loss()[11, 16] + lift_linear, rel=1e-5)
    # The second run: its start is off the grid, so not on the 3-D view; its line breaks there.
    assert not [t for t in traces(fig, "train_loss", "log", "path3d-start") if t["meta"]["run"] == 1]
    (also,) = [t for t in traces(fig, "train_loss", "log", "path3d") if t["meta"]["run"] == 1]
    assert None in also["z"]
    assert "Infinity" not in json.dumps(fig) and "NaN" not in json.dumps(fig)


def test_partial_surface_shows_the_paths(pca_files, tmp_path):
    figs = draw([pca_files["partial"]], tmp_path, kinds=["contour", "filled", "heatmap", "surface3d"])
    assert len(figs) == 4
    for name, fig in figs.items():
        assert {RUN_LABEL, ALSO_LABEL} <= set(legend_texts(fig)), name
        x, y = line_data(artists(fig, "path 0")[0])[:2]
        if "surface3d" not in name:
            assert "not computed yet (blank)" in legend_texts(fig)
            assert np.array_equal(x, RUN_X) and np.array_equal(y, RUN_Y), name
    # 3-D: on the coarse pass that is drawn (its cells: every 4th row and column); linear heights, as
    # the computed values span less than two decades. (0.9, 0.8) lies on the column x = 0.9, between
    # the rows y = 0.2 and y = 1.0.
    L = pca_loss()
    x, y, z = line_data(artists(figs["pcapart_train_loss_surface3d.png"], "path 0 checkpoints")[0])
    assert (x[0], y[0]) == (0.9, 0.8) and z[0] == pytest.approx(np.interp(0.8, [0.2, 1.0], [L[8, 16], L[12, 16]]))
    assert np.isfinite(z).all() and z.max() < 100  # the stale 123 never shows
    # HTML: the paths on the map, the fraction done in the title.
    fig = page_figure(render([pca_files["partial"]], tmp_path, kinds=["html"])[0])
    assert [t["name"] for t in path_traces(fig, "train_loss", "")] == [RUN_LABEL, ALSO_LABEL]
    assert f"({round(100 * PCA_PARTIAL.mean())}% done)" in fig["layout"]["title"]["text"]
    assert [t for t in traces(fig, "train_loss", part="path3d-points") if t["meta"]["run"] == 0]


def test_paths_with_nothing_computed_yet(pca_files, tmp_path, capsys):
    written = render([pca_files["empty"]], tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [f"pcaempty_train_loss_{k}.png" for k in ("contour", "filled", "heatmap", "surface3d")] + ["pcaempty.html"])
    for p in written:
        if p.suffix == ".png":
            assert_png(p)
    figs = draw([pca_files["empty"]], tmp_path / "figs", kinds=["contour", "filled", "heatmap", "surface3d"])
    for name, fig in figs.items():
        ax = fig.axes[0]
        assert len(fig.axes) == 1, name  # no colour bar: there is no value to show
        assert ax.get_title().startswith("resnet20: train loss (0% done)")
        assert {RUN_LABEL, ALSO_LABEL, "trained model (0, 0)", "not computed yet (blank)"} <= set(legend_texts(fig))
        x, y = line_data(artists(fig, "path 0 checkpoints")[0])[:2]
        assert np.array_equal(x, RUN_X) and np.array_equal(y, RUN_Y), name
        assert ax.get_xlim() == pytest.approx((PX.min(), PX.max()), abs=0.16), name
    # 3-D: on the floor of the box.
    z = line_data(artists(figs["pcaempty_train_loss_surface3d.png"], "path 0 checkpoints")[0])[2]
    assert np.array_equal(z, np.zeros(5))
    fig = page_figure(tmp_path / "pcaempty.html")
    assert [t["name"] for t in path_traces(fig)] == [RUN_LABEL, ALSO_LABEL]
    assert np.array_equal(array(path_traces(fig)[0]["x"]), RUN_X)
    assert "(0% done)" in fig["layout"]["title"]["text"] and traces(fig, part="path3d")
    assert {t["name"] for t in traces(fig, part="trained")} == {"trained model (0, 0)"}
    # A view that needs values is refused with one line; summary reports the paths.
    with pytest.raises(UserError, match="nothing is computed yet"):
        render([pca_files["empty"]], tmp_path / "vtp", kinds=["vtp"])
    s = summarize(pca_files["empty"])
    assert s["splits"]["train"]["fraction_done"] == 0 and len(s["trajectory"]["runs"]) == 2


def test_summary_reports_the_paths(pca_files, files, capsys):
    t = summarize(pca_files["pca"])["trajectory"]
    assert t["explained_variance_ratio"] == [0.872, 0.091]
    run, also = t["runs"]
    assert (run["name"], run["pattern"], run["checkpoints"]) == ("run: model_*.pt", "out/train/model_*.pt", 5)
    assert run["mean_error"] == pytest.approx(RUN_ERR.mean()) and run["max_error"] == 0.06
    assert run["start"] == {"checkpoint": "model_0.pt", "x": 0.9, "y": 0.8}
    assert run["end"] == {"checkpoint": "model_8.pt", "x": 0.0, "y": 0.0} and run["outside_grid"] == 0
    assert (also["name"], also["checkpoints"], also["outside_grid"]) == ("ckpt_*.pt", 4, 1)
    assert also["mean_error"] == pytest.approx(0.05)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="verb")
    render_cli.add_summary_arguments(sub.add_parser("summary"))
    assert render_cli.run_summary(parser.parse_args(["summary", str(pca_files["pca"]), "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["trajectory"]["runs"][1]["mean_error"] == pytest.approx(0.05)
    assert render_cli.run_summary(parser.parse_args(["summary", str(pca_files["pca"])])) == 0
    text = capsys.readouterr().out
    assert "[trajectory] PCA plane: PC1 explains 87.2% of the variance, PC2 9.1%" in text
    lines = {line.split()[0] + " " + line.split()[1]: line for line in text.splitlines() if "checkpoints" in line}
    assert "5 checkpoints" in lines["run: model_*.pt"] and "mean error 3.1%" in lines["run: model_*.pt"]
    assert "4 checkpoints" in text and "mean error 5.0%   (1 outside the grid)" in text
    # Where the paths are, beside the grid, to choose a grid that holds them.
    assert (t["paths_x_range"], t["paths_y_range"]) == ([-2.5, 0.9], [-0.1, 1.0])
    assert "the paths span PC1 -2.5 to 0.9, PC2 -0.1 to 1; the grid PC1 -1.5 to 1.5, PC2 -1.4 to 1.4" in text
    assert "trajectory" not in summarize(files["para"]) and "[trajectory]" not in format_summary_of(files["para"])


@pytest.mark.slow
def test_html_paths_in_headless_chromium(chromium, pca_files, tmp_path):
    (page,) = render([pca_files["pca"]], tmp_path, kinds=["html"], split="train")
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("<head>", "<head>" + PAGE_CHECK, 1))
    proc = run_chromium(chromium, checked, tmp_path / "profile", "--virtual-time-budget=30000", "--dump-dom")
    reports = [(m[1], json.loads(m[2])) for m in re.finditer(r'"PAGECHECK (\w+) (.*)", source: ', proc.stderr)]
    assert "error" not in [what for what, _ in reports], [data for what, data in reports if what == "error"]
    states = [s for what, s in reports if what == "state"]
    assert len(states) == 1 + 2 + 2 and ("done", 4) in reports  # train loss (two scales), train accuracy
    for state in states:
        parts = [t["part"] for t in state["shown"]]
        assert parts.count("path") == 2 and parts.count("path3d") == 2, state
        assert {"path-start", "path-end", "path3d-points", "path-legend-start", "surface", "map"} <= set(parts)
