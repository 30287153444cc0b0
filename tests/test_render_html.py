"""The HTML page of a surface: self-contained, every computed series behind its buttons, the marks,
1-D and compared files; and the page itself in a real headless Chromium with no network."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from losslandscape.render import load_surface, render

from helpers import PAGE_CHECK, PX, PY, array, menus, page_figure, paraboloid, run_chromium, traces, write_surface


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
