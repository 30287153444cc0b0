"""The Hessian views: the ratio map |min/max| (the paper's figure 8), the eigenvalue maps, the
spectrum at the centre, in the pictures, the HTML page and the summary. The maps are written
here by hand on the paraboloid's grid (tests/helpers.py: add_hessian)."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from losslandscape.errors import UserError
from losslandscape.render import load_surface, render, summarize
from losslandscape.render import cli as render_cli

from helpers import (CENTRE, EIG_SETTINGS, PAGE_CHECK, PARTIAL_EIG, PX, PY, add_hessian, array, assert_png,
                     draw, eig_maps, format_summary_of, legend_texts, marks, menus, page_figure, paraboloid,
                     run_chromium, spectral_density, traces, write_surface)


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


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
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


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
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
