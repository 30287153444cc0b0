"""One rule for the interactive page (issue #30, item 11): by default `render` writes every view
that fits a file, and the page fits both kinds, so a 1-D file gets its page as a 2-D file does;
`--kind` chooses the views, the page included or not, for either kind alike.

The files are written with h5py (tests/conftest.py's `files`); the pages are read back as the
Plotly figures they hold (tests/helpers.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from losslandscape.render import cli as render_cli
from losslandscape.render import load_surface, render
from losslandscape.render.kinds import default_kinds

from helpers import page_figure, traces


def names(written: list[Path]) -> list[str]:
    return [p.name for p in written]


def test_a_1d_file_gets_its_page_by_default_as_a_2d_file_does(files, tmp_path):
    one = render([files["curve"]], tmp_path / "1d")
    assert names(one) == ["curve_curve.png", "curve.html"]
    lines = traces(page_figure(one[1]), part="line")  # the chart of the curve's loss and accuracy
    assert [t["name"] for t in lines] == ["train loss", "train accuracy", "test loss", "test accuracy"]
    # The same rule for both kinds (a 2-D file's default views, written: tests/test_render.py).
    assert all("html" in default_kinds(load_surface(files[k]), None) for k in ("curve", "para"))
    # Several files of one kind: each its page and one page comparing them, 1-D as 2-D.
    several = render([files["curve"], files["curve2"]], tmp_path / "both", split="train")
    assert names(several) == ["curve_train_curve.png", "curve_train.html", "curve2_train_curve.png",
                              "curve2_train.html", "curve_vs_curve2_train_loss_compare.png",
                              "curve_vs_curve2_train_compare.html"]


def test_the_kind_flag_leaves_the_page_out_for_either_kind(files, tmp_path, capsys):
    for path, kind in ((files["curve"], "curve"), (files["para"], "contour")):
        args = argparse.Namespace(surfaces=[str(path)], kinds=[[kind]], split="train", value=None, out=tmp_path,
                                  fmt="svg", vmin=None, vmax=None, levels=None, log=None, zmax=None)
        assert render_cli.run_render(args) == 0
        assert [Path(p).suffix for p in capsys.readouterr().out.split()] == [".svg"]
