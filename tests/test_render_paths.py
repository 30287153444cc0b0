"""Training paths on PCA surfaces: the reader, every 2-D view, the HTML page, partial surfaces and
the summary. The paths are written here by hand (tests/helpers.py: add_paths)."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from losslandscape.errors import UserError
from losslandscape.render import load_surface, render, summarize
from losslandscape.render import cli as render_cli

from helpers import (ALSO_ERR, ALSO_X, ALSO_Y, PAGE_CHECK, PCA_PARTIAL, PCA_SPEC, PX, PY, RUN_ERR, RUN_X,
                     RUN_Y, add_paths, array, artists, assert_png, draw, format_summary_of, legend_texts,
                     page_figure, pca_loss, run_chromium, traces, write_surface)


RUN_LABEL = "run: model_*.pt (mean error 3.1%)"


ALSO_LABEL = "ckpt_*.pt (mean error 5.0%; 1 of 4 checkpoints outside the grid)"


def path_traces(fig: dict, series: str | None = None, scale: str | None = None, part: str = "path") -> list[dict]:
    """A page's traces of one part of the paths, in run order (the run's own first)."""
    return sorted(traces(fig, series, scale, part), key=lambda t: t["meta"]["run"])


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
