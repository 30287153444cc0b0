"""Pictures and numbers from surface files.

    load_surface(path)            -> Surface (NaN where not computed)
    render(paths, out_dir, ...)   -> files written (PNG/PDF/SVG, VTP, HTML)
    summarize(path)               -> dict of summary numbers (JSON-serialisable)

Kinds of view (`KINDS`):
  curve      1-D: loss and accuracy, train and test, on twin axes (Li et al., Figs. 2-3);
             the loss alone for a file whose loss defines no accuracy (no `_acc` datasets)
  contour    2-D: labelled contour lines (the original code's vmin/vmax/vlevel)
  filled     2-D: filled contours
  heatmap    2-D: one cell per grid point
  surface3d  2-D: shaded 3-D surface
  compare    several files side by side, same levels and colour scale
  vtp        2-D: ParaView XML PolyData, any nx x ny grid
  html       one self-contained interactive page (Plotly, nothing loaded from the network):
             2-D: 3-D surface and heat map with contours; 1-D: loss and accuracy curves;
             with several files, also one page comparing them side by side; a file with
             Hessian eigenvalue maps also offers them, as heat maps
  ratio      2-D, with the `hessian` verb's maps: |min_eig / max_eig| (Li et al., Fig. 8),
             colour scale 0 to 0.5, loss contours over it
  eigenvalues  2-D, with the maps: max_eig and min_eig side by side
  spectrum   with `hessian --centre`: the spectral density at the centre, top and min
             eigenvalues marked, the trace

Partial surfaces draw what is computed and say how much in the title;
diverged points (+inf) are clipped to the top of the colour range (and break
the 1-D curve). Titles say what the surface was made from (checkpoint, kind
of directions); 2-D views mark the trained model (0, 0) and the best point,
with a legend; a file's train and test views share levels and colours.

A PCA surface (directions.kind = "pca") has training paths on its plane: contour,
filled, heatmap, surface3d, compare and html draw each run's path through its
checkpoints, start and end marked, one colour per run, named with its mean projection
error in the legend; the axes are labelled PC1 and PC2 with their share of the
variance and stay at the grid (a path leaving it is cut at the edge, and its legend
entry counts the checkpoints outside). Such a file with nothing computed yet still
draws these views (html included), with the paths alone (see `paths`).

Value scale: `log` True (--log) or False (--linear) forces it; None, the
default, draws a loss whose finite positive values span more than two decades
on a log scale (levels, colours, and log10 heights in surface3d), as a trained
net's surface does (~1e-3 at the minimum, ~1e2 at the corners); accuracy, a
loss in a narrower range, or a given vmin/vmax stays linear. curve and vtp
stay linear unless log is True. The html page starts on the same scale and
has buttons to switch a loss between log and linear.
This package needs numpy, h5py, matplotlib and plotly (html) only: no torch, no MPI.

Modules: `view` (what both back ends draw from: options, splits, View2D, marks), `ranges`
(value ranges, clipping, grid cells), `labels` (titles, labels, file names), `kinds` (the
table from a kind of view to its drawing function), `output` (`render`: the files); the
matplotlib back end `mplfigure`, `plot1d`, `plot2d`, `curvature`; the Plotly back end
`html` (2-D pages), `html1d` (1-D pages), `htmlparts` (writing, buttons); `paths` (training
paths, both back ends); `vtp`, `summary`, `surfacefile` (reading), `cli`.
"""

from __future__ import annotations

from losslandscape.render.kinds import HESSIAN_KINDS, KINDS
from losslandscape.render.output import render
from losslandscape.render.summary import summarize
from losslandscape.surfacefile.read import Surface, load_surface

__all__ = ["HESSIAN_KINDS", "KINDS", "Surface", "load_surface", "render", "summarize"]
