"""Training paths on a PCA surface (Li et al., Sec. 7), for every 2-D view.

A PCA surface (`directions.kind = "pca"`) is the plane of the first two principal components
of a training run's checkpoints around its final model; the file holds each checkpoint's
place on that plane, for the run itself and for further runs projected on it
(`Surface.trajectories`). Each run is drawn as a line through its checkpoints in training
order, a small dot at each, its first checkpoint (the start) as a white circle ringed in the
run's colour and its last (the end) as a square filled with it; one colour per run
(`PATH_COLORS`, the run's own first, and drawn over the others). The legend names each run
with its mean projection error, "run: model_*.pt (mean error 3.1%)": the mean over its
checkpoints of their distance from the plane relative to their distance from the final
model, which says how much of the real path the drawn one leaves out.

The axes stay at the grid (the surface is what was computed): a path that leaves the grid
is cut at the edge of the picture, and its legend entry says how many of its checkpoints lie
outside ("2 of 20 checkpoints outside the grid"). On the 3-D view the path lies on the
surface: its height at every point of the line (sampled a quarter of a grid step apart, so
the line follows the surface between checkpoints) is the drawn surface's, bilinearly
interpolated; where no surface is drawn (outside the grid, or over cells not computed yet)
the line breaks. While no cell is whole, or nothing is computed at all, the paths lie on
the floor of the 3-D box instead.

Both back ends draw them here: `draw` and `draw_3d` on matplotlib axes, `add_to_map`,
`add_to_scene` and `add_legend` as traces of the html page (`htmlparts.Traces`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from losslandscape.render import labels
from losslandscape.render.htmlparts import Panel, Traces, escape, text
from losslandscape.surfacefile.read import Surface

# Colours that stand out on viridis (dark blue to yellow) and from the red star of the best point.
PATH_COLORS = ("#ff7f0e", "#e377c2", "#17becf", "#8c564b", "#bcbd22", "#7f7f7f", "#1f77b4")
START_LABEL = "start: first checkpoint"
END_LABEL = "end: last checkpoint"
# Matplotlib styles; the colour of the run is added (mec for the start, mfc for the end).
LINE_STYLE = dict(lw=1.5, solid_capstyle="round")
POINT_STYLE = dict(ls="none", marker="o", ms=3.2, mew=0.5, mec="black")  # each checkpoint
START_STYLE = dict(ls="none", marker="o", ms=8.0, mfc="white", mew=1.8)
END_STYLE = dict(ls="none", marker="s", ms=8.5, mec="black", mew=0.7)
ZORDER = 3.5  # above the surface and the computed points' dots, below the best point and the trained model


def zorder(k: int) -> float:
    """Run k's base zorder: the run's own path (k = 0) on top of the others."""
    return ZORDER - 0.01 * min(k, 40)
PATH_LEGEND_RANK = 1001  # html: the paths' legend entries after the marks' (Plotly's default is 1000), in run order
SAMPLES_PER_STEP = 4  # 3-D: points of the line per grid step, so that it follows the surface
MAX_SAMPLES = 4000  # 3-D: at most this many points per path


def color(k: int) -> str:
    return PATH_COLORS[k % len(PATH_COLORS)]


def mean_error(run: dict[str, Any]) -> float | None:
    """The run's mean projection error over its checkpoints (a fraction; None if none is known)."""
    error = np.asarray(run["error"], dtype=float)
    finite = error[np.isfinite(error)]
    return float(finite.mean()) if finite.size else None


def outside(run: dict[str, Any], surface: Surface) -> np.ndarray:
    """Bool (n,): the checkpoints outside the grid's rectangle."""
    x, y = np.asarray(run["x"], dtype=float), np.asarray(run["y"], dtype=float)
    tx, ty = 1e-9 * max(np.ptp(surface.x), 1e-300), 1e-9 * max(np.ptp(surface.y), 1e-300)
    return ((x < surface.x.min() - tx) | (x > surface.x.max() + tx)
            | (y < surface.y.min() - ty) | (y > surface.y.max() + ty) | ~np.isfinite(x) | ~np.isfinite(y))


def label(run: dict[str, Any], surface: Surface, prefix: str = "") -> str:
    """'run: model_*.pt (mean error 3.1%)', and '; 2 of 20 checkpoints outside the grid' where some are."""
    err = mean_error(run)
    parts = ["mean error " + ("unknown" if err is None else labels.percent(err))]
    out = int(outside(run, surface).sum())
    if out:
        n = len(run["x"])
        parts.append(f"{out} of {n} checkpoint{'s' if n != 1 else ''} outside the grid")
    return f"{prefix}{run['name']} ({'; '.join(parts)})"


def checkpoint_name(run: dict[str, Any], i: int) -> str:
    names = run.get("checkpoints") or []
    return names[i] if -len(names) <= i < len(names) else f"checkpoint {i % max(len(run['x']), 1) + 1}"


def densify(x: np.ndarray, y: np.ndarray, sx: float, sy: float) -> tuple[np.ndarray, np.ndarray]:
    """The polyline through (x, y) sampled about SAMPLES_PER_STEP times per grid step (sx, sy),
    its vertices included."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return x.copy(), y.copy()
    steps = np.maximum(np.abs(np.diff(x)) / sx, np.abs(np.diff(y)) / sy)
    n = np.clip(np.ceil(np.nan_to_num(steps, nan=1.0) * SAMPLES_PER_STEP), 1, None).astype(np.int64)
    if n.sum() > MAX_SAMPLES:
        n = np.maximum(1, (n * (MAX_SAMPLES / n.sum())).astype(np.int64))
    xs, ys = [], []
    for k, m in enumerate(n):
        t = np.arange(m) / m
        xs.append(x[k] + t * (x[k + 1] - x[k]))
        ys.append(y[k] + t * (y[k + 1] - y[k]))
    xs.append(x[-1:])
    ys.append(y[-1:])
    return np.concatenate(xs), np.concatenate(ys)


def interpolate(xg: np.ndarray, yg: np.ndarray, zg: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of zg (ny, nx) on the grid xg, yg at the points (px, py); NaN
    outside the grid and in cells with a corner not computed (NaN)."""
    xg, yg, zg = np.asarray(xg, float), np.asarray(yg, float), np.asarray(zg, float)
    px, py = np.asarray(px, float), np.asarray(py, float)
    out = np.full(px.shape, np.nan)
    if xg.size < 2 or yg.size < 2:
        return out
    if xg[0] > xg[-1]:
        xg, zg = xg[::-1], zg[:, ::-1]
    if yg[0] > yg[-1]:
        yg, zg = yg[::-1], zg[::-1, :]
    tol_x, tol_y = 1e-9 * np.ptp(xg), 1e-9 * np.ptp(yg)
    inside = (px >= xg[0] - tol_x) & (px <= xg[-1] + tol_x) & (py >= yg[0] - tol_y) & (py <= yg[-1] + tol_y)
    if not inside.any():
        return out
    qx, qy = np.clip(px[inside], xg[0], xg[-1]), np.clip(py[inside], yg[0], yg[-1])
    i = np.clip(np.searchsorted(xg, qx, side="right") - 1, 0, xg.size - 2)
    j = np.clip(np.searchsorted(yg, qy, side="right") - 1, 0, yg.size - 2)
    tx = (qx - xg[i]) / (xg[i + 1] - xg[i])
    ty = (qy - yg[j]) / (yg[j + 1] - yg[j])
    z = ((1 - tx) * (1 - ty) * zg[j, i] + tx * (1 - ty) * zg[j, i + 1]
         + (1 - tx) * ty * zg[j + 1, i] + tx * ty * zg[j + 1, i + 1])
    out[inside] = z
    return out


def steps(surface: Surface) -> tuple[float, float]:
    """The grid's smallest steps along x and y (1 for a one-point axis)."""
    def step(a: np.ndarray) -> float:
        d = np.abs(np.diff(a))
        d = d[d > 0]
        return float(d.min()) if d.size else 1.0

    return step(surface.x), step(surface.y)


def on_surface(run: dict[str, Any], surface: Surface, lattice: tuple | None, floor: float):
    """The 3-D path: (x, y, z) of the densified line, NaN where it breaks, and (x, y, z) of the
    checkpoints, NaN where they are not on the drawn surface. `lattice` is the drawn surface,
    (x, y, heights), or None: then every point inside the grid lies at `floor`."""
    sx, sy = steps(surface)
    lx, ly = densify(run["x"], run["y"], sx, sy)
    cx, cy = np.asarray(run["x"], dtype=float), np.asarray(run["y"], dtype=float)
    if lattice is None:
        probe = {"x": lx, "y": ly}
        lz = np.where(outside(probe, surface), np.nan, floor)
        cz = np.where(outside(run, surface), np.nan, floor)
    else:
        gx, gy, gz = lattice
        lz, cz = interpolate(gx, gy, gz, lx, ly), interpolate(gx, gy, gz, cx, cy)
    off = np.isnan(lz)
    keep = ~off | ~np.concatenate([[False], off[:-1]])  # one NaN for each break, not one per point off
    line = (np.where(off, np.nan, lx)[keep], np.where(off, np.nan, ly)[keep], lz[keep])
    return line, (cx, cy, cz)


# ---------------------------------------------------------------- matplotlib


def _halo():
    import matplotlib.patheffects as pe

    return [pe.Stroke(linewidth=3.2, foreground="white", alpha=0.8), pe.Normal()]


def draw(ax, surface: Surface, prefix: str = "") -> None:
    """Every path of `surface` on a 2-D axes (clipped at the axes, which stay at the grid)."""
    for k, run in enumerate(surface.trajectories):
        c = color(k)
        x, y = np.asarray(run["x"], dtype=float), np.asarray(run["y"], dtype=float)
        if x.size == 0:
            continue
        z = zorder(k)
        ax.plot(x, y, color=c, label=label(run, surface, prefix), zorder=z, gid=f"path {k}",
                path_effects=_halo(), **LINE_STYLE)
        ax.plot(x, y, mfc=c, label=f"_checkpoints {k}", zorder=z + 0.002, gid=f"path {k} checkpoints",
                **POINT_STYLE)
        ax.plot(x[:1], y[:1], mec=c, label=f"_start {k}", zorder=z + 0.004, gid=f"path {k} start", **START_STYLE)
        ax.plot(x[-1:], y[-1:], mfc=c, label=f"_end {k}", zorder=z + 0.006, gid=f"path {k} end", **END_STYLE)


def draw_3d(ax, surface: Surface, lattice: tuple | None, floor: float) -> None:
    """Every path of `surface` on a 3-D axes: on the drawn surface `lattice` (x, y, heights), or at
    `floor` where there is none (see `on_surface`)."""
    for k, run in enumerate(surface.trajectories):
        if len(run["x"]) == 0:
            continue
        c = color(k)
        (lx, ly, lz), (cx, cy, cz) = on_surface(run, surface, lattice, floor)
        z = zorder(k)
        ax.plot(lx, ly, lz, color=c, label=label(run, surface), zorder=z, gid=f"path {k}",
                path_effects=_halo(), **LINE_STYLE)
        on = ~np.isnan(cz)
        ax.plot(cx[on], cy[on], cz[on], mfc=c, zorder=z + 0.002, gid=f"path {k} checkpoints",
                label=f"_checkpoints {k}", **POINT_STYLE)
        for idx, style, key, gid, dz in ((0, START_STYLE, "mec", "start", 0.004), (-1, END_STYLE, "mfc", "end", 0.006)):
            if on[idx]:
                ax.plot(cx[idx:][:1], cy[idx:][:1], cz[idx:][:1], zorder=z + dz, gid=f"path {k} {gid}",
                        label=f"_{gid} {k}", **{key: c}, **style)


def legend_handles(surfaces: list[Surface]) -> list:
    """The legend's entries for the start and end markers (in grey: each run has its colour),
    where some file has a path."""
    from matplotlib.lines import Line2D

    if not any(s.trajectories for s in surfaces):
        return []
    return [Line2D([], [], mec="0.3", label=START_LABEL, **START_STYLE),
            Line2D([], [], mfc="0.55", label=END_LABEL, **END_STYLE)]


# ---------------------------------------------------------------- Plotly (the html page)


def _path_markers(color: str) -> tuple[dict, dict, dict]:
    """Plotly markers of a path (as POINT_STYLE, START_STYLE, END_STYLE): each checkpoint,
    the start, the end."""
    return ({"size": 5, "color": color, "line": {"color": "white", "width": 0.8}},
            {"symbol": "circle", "size": 12, "color": "white", "line": {"color": color, "width": 2.5}},
            {"symbol": "square", "size": 12, "color": color, "line": {"color": "black", "width": 1}})


def _runs(panel: Panel):
    """Each run of the panel's file, its own drawn last (on top): its index, the run, and what
    its traces share (colour, legend group, name, hover text per checkpoint)."""
    surf = panel.surface
    xl, yl = (text(labels.axis_label(surf, a)) for a in ("x", "y"))
    for r, run in reversed(list(enumerate(surf.trajectories))):
        if len(run["x"]) == 0:
            continue
        name = escape(label(run, surf, panel.prefix))
        errors = [labels.percent(e) if np.isfinite(e) else "unknown" for e in np.asarray(run["error"], dtype=float)]
        yield r, run, {
            "color": color(r), "legendgroup": f"path{r}-{panel.scene}", "name": name,
            "text": [escape(checkpoint_name(run, i)) for i in range(len(run["x"]))], "customdata": errors,
            "hovertemplate": (f"%{{text}}<br>{xl} %{{x:.4g}}<br>{yl} %{{y:.4g}}<br>off the plane: %{{customdata}}"
                              f"<extra>{name}</extra>"),
        }


def add_to_map(traces: Traces, go, k: int, panel: Panel) -> None:
    """Each run's path on the panel's map (series k, either scale): the line through its
    checkpoints, named in the legend, then its start and end."""
    for r, run, shared in _runs(panel):
        color, hover, errors = shared.pop("color"), shared.pop("text"), shared.pop("customdata")
        point, start, end = _path_markers(color)
        x, y = np.asarray(run["x"], dtype=float).tolist(), np.asarray(run["y"], dtype=float).tolist()
        traces.add(go.Scatter(
            x=x, y=y, mode="lines+markers", line={"color": color, "width": 2}, marker=point,
            legendrank=PATH_LEGEND_RANK + r, text=hover, customdata=errors, **shared),
            k, part="path", cell=panel.map_cell, run=r)
        for idx, marker, part in ((0, start, "path-start"), (-1, end, "path-end")):
            traces.add(go.Scatter(
                x=[x[idx]], y=[y[idx]], mode="markers", marker=marker, showlegend=False, text=[hover[idx]],
                customdata=[errors[idx]], **shared), k, part=part, cell=panel.map_cell, run=r)


def add_legend(traces: Traces, go, k: int, panels: list[Panel]) -> None:
    """Legend entries (series k) for the start and end markers, in grey: each run has its colour."""
    if not any(p.surface.trajectories for p in panels):
        return
    _, start, end = _path_markers("#555555")
    for label, marker, part in ((START_LABEL, start, "path-legend-start"),
                                (END_LABEL, end, "path-legend-end")):
        traces.add(go.Scatter(
            x=[None], y=[None], mode="markers", marker=marker, name=label, hoverinfo="skip",
            legendrank=PATH_LEGEND_RANK + 100), k, part=part, cell=panels[0].map_cell)


def add_to_scene(traces: Traces, go, k: int, scale: str, panel: Panel, lattice: tuple | None,
                  floor: float) -> None:
    """Each run's path on the panel's 3-D view (series k, `scale`): on the surface `lattice`
    (x, y, heights) or at `floor` (see `on_surface`); in its run's legend group."""

    def listed(a) -> list:
        return [None if not np.isfinite(v) else float(f"{v:.7g}") for v in np.asarray(a, dtype=float)]

    for r, run, shared in _runs(panel):
        color, hover, errors = shared.pop("color"), shared.pop("text"), shared.pop("customdata")
        point, start, end = _path_markers(color)
        (lx, ly, lz), (cx, cy, cz) = on_surface(run, panel.surface, lattice, floor)
        traces.add(go.Scatter3d(
            x=listed(lx), y=listed(ly), z=listed(lz), mode="lines", line={"color": color, "width": 5},
            name=shared["name"], legendgroup=shared["legendgroup"], showlegend=False, hoverinfo="skip",
            scene=panel.scene, connectgaps=False), k, scale, "path3d", run=r)
        on = ~np.isnan(cz)
        # The checkpoints, then the start and the end where they are on the surface.
        marks = [(np.flatnonzero(on), dict(point, size=3.5), "path3d-points")]
        if on[0]:
            marks.append((np.array([0]), dict(start, size=7), "path3d-start"))
        if on[-1]:
            marks.append((np.array([on.size - 1]), dict(end, size=7), "path3d-end"))
        for idx, marker, part in marks:
            if idx.size == 0:
                continue
            traces.add(go.Scatter3d(
                x=cx[idx].tolist(), y=cy[idx].tolist(), z=cz[idx].tolist(), mode="markers", marker=marker,
                showlegend=False, scene=panel.scene, text=[hover[i] for i in idx],
                customdata=[errors[i] for i in idx], **shared), k, scale, part, run=r)
