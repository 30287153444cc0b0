"""Tests of losslandscape.render: reading surface files and the pictures (PNG, PDF, SVG, VTP): every
2-D and 1-D view, what the pictures say (marks, titles, legends), the value scale.

Surface files are written here with h5py (tests/helpers.py: the paraboloid loss = x^2 + 2 y^2 on
a non-square grid gives numbers to check against analytic values). The HTML page, the summary,
the Hessian views and the training paths have files of their own (tests/test_render_*.py).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from losslandscape.errors import UserError
from losslandscape.render import HESSIAN_KINDS, KINDS, load_surface, ranges, render, summarize

from helpers import (PX, PY, array, artists, assert_png, draw, legend_texts, marks, page_figure, paraboloid,
                     traces, write_surface)


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
    assert [p.name for p in svg] == ["curve_curve.svg", "curve.html"]  # every file gets its page (#30)
    head = svg[0].read_text()[:400]
    assert head.startswith("<?xml") and "<svg" in head


def test_curve_of_a_1d_surface(files, tmp_path):
    written = render([files["curve"]], tmp_path)
    assert [p.name for p in written] == ["curve_curve.png", "curve.html"]  # every file gets its page (#30)
    assert_png(written[0])
    logs = render([files["curve"]], tmp_path, split="test", value="loss", log=True)
    assert [p.name for p in logs] == ["curve_test_loss_curve.png", "curve_test_loss.html"]
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


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
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


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
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


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
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
