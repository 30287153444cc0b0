"""The summary numbers of a surface (basin radii, the minimum, partial and 1-D files), the `render`
and `summary` verbs, and what the renderer imports (neither torch nor mpi4py)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from losslandscape.render import cli as render_cli
from losslandscape.render import mplfigure, ranges, summarize

from helpers import PX, PY, REPO, draw, paraboloid, write_surface


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
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
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
