"""Numbers that describe a surface: the centre, the minimum, how fast the loss
rises on rings around the centre, and how wide the basin is along each axis.

Distances are in the grid's own coordinates (the step sizes along the
directions), measured from the origin (0, 0).

Where the file has the `hessian` verb's results, also (key "hessian"): the eigenvalue
maps' settings, fraction done and the largest |min/max| over the computed points
("maps"), and the spectrum at the centre: top eigenvalues, the smallest, |min/max|, the
trace and its standard error ("centre").

Where the file is a PCA surface with training paths (key "trajectory"): the explained
variance ratio of PC1 and PC2, and per run (the run's own first) its name, glob, number of
checkpoints, mean and largest projection error (fractions: 0.031 is 3.1%), how many of its
checkpoints lie outside the grid, and its first and last checkpoint with their coordinates;
and the range of the paths' coordinates (paths_x_range, paths_y_range), to choose a grid
that holds them.
Such a file is summarised even with nothing computed yet.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import labels, paths, view
from losslandscape.surfacefile.read import Surface, load_surface

RING_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def _num(v) -> float | None:
    """A JSON-safe float: None for NaN (not computed) and for +-inf (diverged)."""
    v = float(v)
    return v if math.isfinite(v) else None


def grid_step(surface: Surface) -> float:
    """The ring width: the larger of the two axes' mean grid steps."""
    steps = [np.ptp(a) / (a.size - 1) for a in (surface.x, surface.y) if a is not None and a.size > 1]
    return float(max(steps)) if steps else 1.0


def distances(surface: Surface) -> np.ndarray:
    """Distance of every grid point to the origin; (ny, nx), or (nx,) for 1-D."""
    if surface.y is None:
        return np.abs(surface.x)
    X, Y = np.meshgrid(surface.x, surface.y)
    return np.hypot(X, Y)


def ring_mask(dist: np.ndarray, radius: float, step: float) -> np.ndarray:
    """Points whose distance rounds to `radius` at resolution `step`:
    radius - step/2 <= d < radius + step/2 (with a tolerance for float noise)."""
    tol = 1e-9 * step
    return (dist >= radius - step / 2 - tol) & (dist < radius + step / 2 - tol)


def ring_radii(surface: Surface) -> list[float]:
    """A few radii that are coordinates of the grid: about 1/4, 1/2, 3/4 and all
    of the largest radius whose ring lies inside the grid on every side."""
    axes = [surface.x] if surface.y is None else [surface.x, surface.y]
    r_max = min(min(a.max(), -a.min()) for a in axes)
    candidates = np.unique(np.abs(surface.x[surface.x != 0]))
    if r_max <= 0:  # the origin is at (or beyond) an edge: one-sided rings
        r_max = float(candidates.max()) if candidates.size else 0.0
    candidates = candidates[candidates <= r_max * (1 + 1e-9)]
    if candidates.size == 0:
        return []
    radii = {float(candidates[np.argmin(np.abs(candidates - f * r_max))]) for f in RING_FRACTIONS}
    return sorted(radii)


def _centre_index(surface: Surface) -> tuple[int, ...]:
    i0 = int(np.argmin(np.abs(surface.x)))
    if surface.y is None:
        return (i0,)
    return (int(np.argmin(np.abs(surface.y))), i0)


def _basin(line: np.ndarray, coords: np.ndarray, order: np.ndarray, limit: float) -> float | None:
    """|coordinate| of the first point along `order` whose loss exceeds `limit`;
    points not computed (NaN) are skipped, diverged ones (+inf) exceed."""
    for k in order:
        v = line[k]
        if not np.isnan(v) and v > limit:
            return float(abs(coords[k]))
    return None


def split_summary(surface: Surface, split: str, threshold: float = 1.0) -> dict:
    loss = surface.values.get(f"{split}_loss")
    acc = surface.values.get(f"{split}_acc")
    centre = _centre_index(surface)
    out: dict = {"fraction_done": surface.fraction_done.get(split, 0.0)}
    c = {"x": float(surface.x[centre[-1]])}
    if surface.y is not None:
        c["y"] = float(surface.y[centre[0]])
    # the trained model is (0, 0); a grid without 0 on an axis only has a point near it
    c["on_grid"] = all(abs(v) <= 1e-12 for k, v in c.items() if k in ("x", "y"))
    c["loss"] = None if loss is None else _num(loss[centre])
    if surface.has_accuracy:  # a file whose loss defines no accuracy has no "acc" keys
        c["acc"] = None if acc is None else _num(acc[centre])
    out["centre"] = c
    if loss is None:
        return out

    finite = np.isfinite(loss)
    out["diverged_points"] = int(np.isposinf(loss).sum())
    if finite.any():
        k = np.unravel_index(np.argmin(np.where(finite, loss, np.inf)), loss.shape)
        m = {"loss": float(loss[k]), "x": float(surface.x[k[-1]])}
        if surface.y is not None:
            m["y"] = float(surface.y[k[0]])
        if acc is not None:
            m["acc"] = _num(acc[k])
        out["minimum"] = m
    else:
        out["minimum"] = None

    centre_loss = c["loss"]
    step = grid_step(surface)
    dist = distances(surface)
    rings = []
    for r in ring_radii(surface):
        mask = ring_mask(dist, r, step)
        values = loss[mask]
        ok = values[np.isfinite(values)]
        mean = float(ok.mean()) if ok.size else None
        rings.append(
            {
                "radius": r,
                "points": int(mask.sum()),
                "computed": int((~np.isnan(values)).sum()),
                "diverged": int(np.isposinf(values).sum()),
                "mean_loss": mean,
                "mean_increase": None if mean is None or centre_loss is None else mean - centre_loss,
            }
        )
    out["rings"] = rings

    basin: dict[str, float | None] = {}
    if surface.y is None:
        lines = {"x": (loss, surface.x, centre[0])}
    else:
        j0, i0 = centre
        lines = {"x": (loss[j0, :], surface.x, i0), "y": (loss[:, i0], surface.y, j0)}
    for axis, (line, coords, k0) in lines.items():
        for sign, order in (("+", np.arange(k0 + 1, coords.size)), ("-", np.arange(k0 - 1, -1, -1))):
            basin[axis + sign] = None if centre_loss is None else _basin(line, coords, order, centre_loss + threshold)
    out["basin_radius"] = basin
    return out


def _point(surface: Surface, k: tuple[int, ...]) -> dict:
    out = {"x": float(surface.x[k[-1]])}
    if surface.y is not None:
        out["y"] = float(surface.y[k[0]])
    return out


def hessian_summary(surface: Surface) -> dict:
    """The `hessian` verb's results: {"maps": ..., "centre": ...}, each only where the file
    has it; {} for a file with neither. JSON-safe (None for NaN and inf)."""
    out: dict = {}
    if surface.eig is not None:
        computed = surface.eig_computed
        ratio = surface.eig_ratio
        m: dict = {k: surface.eig_settings.get(k) for k in ("split", "samples", "params", "tol")}
        m.update(fraction_done=surface.eig_fraction_done, points_done=int(computed.sum()), points=int(computed.size))
        finite = computed & np.isfinite(ratio)
        m["max_ratio"] = m["max_ratio_at"] = None
        if finite.any():
            k = np.unravel_index(np.argmax(np.where(finite, ratio, -np.inf)), ratio.shape)
            m["max_ratio"], m["max_ratio_at"] = float(ratio[k]), _point(surface, k)
        centre = _centre_index(surface)
        m["centre"] = {**_point(surface, centre), "max_eig": _num(surface.eig["max"][centre]),
                       "min_eig": _num(surface.eig["min"][centre]), "ratio": _num(ratio[centre])}
        out["maps"] = m
    c = surface.centre_spectrum
    if c is not None:
        keys = ("split", "samples", "params", "parameters", "min_eigenvalue", "ratio_min_max", "trace",
                "trace_stderr", "hutchinson_samples", "trace_method", "trace_products", "trace_deflated", "trace_seed")
        out["centre"] = {k: (_num(c[k]) if isinstance(c.get(k), float) else c.get(k)) for k in keys}
        out["centre"]["top_eigenvalues"] = [_num(v) for v in c["top_eigenvalues"]]
    return out


def summarize(path: str | Path, threshold: float = 1.0) -> dict:
    """Summary numbers per split present; standard JSON (None where a value is not computed,
    diverged, or not a finite number). Raises UserError when nothing is computed."""
    if not math.isfinite(threshold) or threshold <= 0:
        raise UserError(f"threshold is {threshold}, expected a positive number")
    surface = load_surface(path)
    with np.errstate(over="ignore"):  # a mean of huge losses overflows to inf: None in the result
        return json_safe(_summarize(surface, threshold))


def _summarize(surface: Surface, threshold: float) -> dict:
    if all(f == 0 for f in surface.fraction_done.values()) and not surface.trajectories:
        raise UserError(f"{surface.path}: nothing is computed yet (0 points done)")
    result = {
        "file": str(surface.path),
        "model": labels.model_label(surface),  # a Python model by its class, as the pictures name it
        "dims": surface.ndim,
        "grid": [int(surface.x.size)] + ([] if surface.y is None else [int(surface.y.size)]),
        "x_range": [float(surface.x.min()), float(surface.x.max())],
        "threshold": float(threshold),
        "splits": {},
    }
    if surface.y is not None:
        result["y_range"] = [float(surface.y.min()), float(surface.y.max())]
    # a split no run asked for and with nothing computed is not part of this surface
    asked = view.requested_splits(surface)
    for split in surface.splits:
        if split in asked or surface.fraction_done[split] > 0 or not asked:
            result["splits"][split] = split_summary(surface, split, threshold)
    hessian = hessian_summary(surface)
    if hessian:
        result["hessian"] = hessian
    trajectory = trajectory_summary(surface)
    if trajectory:
        result["trajectory"] = trajectory
    return result


def json_safe(value):
    """`value` with every float that JSON cannot hold (NaN, +-inf: a mean or a difference that
    overflowed, an attribute of the file) as None, so that `summary --json` is standard JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def trajectory_summary(surface: Surface) -> dict:
    """A PCA surface's plane and paths: {"explained_variance_ratio": [PC1, PC2] or None, "runs":
    [...]}; {} for a file with neither. JSON-safe (None for NaN)."""
    ratio = surface.explained_variance_ratio
    if not surface.trajectories and ratio is None:
        return {}
    runs = []
    for run in surface.trajectories:
        n = len(run["x"])
        error = np.asarray(run["error"], dtype=float)
        finite = error[np.isfinite(error)]

        def at(i: int) -> dict | None:
            if n == 0:
                return None
            return {"checkpoint": paths.checkpoint_name(run, i), "x": _num(run["x"][i]), "y": _num(run["y"][i])}

        runs.append({
            "name": run["name"], "pattern": run["pattern"], "checkpoints": n,
            "mean_error": paths.mean_error(run), "max_error": float(finite.max()) if finite.size else None,
            "outside_grid": int(paths.outside(run, surface).sum()) if surface.y is not None else None,
            "start": at(0), "end": at(-1),
        })
    out = {"explained_variance_ratio": None if ratio is None else [_num(v) for v in ratio], "runs": runs}
    # Where the paths are, to choose a grid that holds them (the axes of the pictures stay at the grid).
    for axis in ("x", "y"):
        values = np.concatenate([np.asarray(r[axis], dtype=float) for r in surface.trajectories] or [np.zeros(0)])
        values = values[np.isfinite(values)]
        out[f"paths_{axis}_range"] = [float(values.min()), float(values.max())] if values.size else None
    return out


def _f(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def format_summary(summary: dict) -> str:
    """A readable table of `summarize`'s result."""
    grid = " x ".join(str(n) for n in summary["grid"])
    lines = [f"{summary['file']}: {summary['model']}, {summary['dims']}-D grid {grid}"]
    two_d = summary["dims"] == 2
    for split, s in summary["splits"].items():
        lines.append("")
        lines.append(f"[{split}] {100 * s['fraction_done']:.1f}% done")
        c = s["centre"]
        at = f"({_f(c['x'])}, {_f(c['y'])})" if two_d else f"({_f(c['x'])})"
        acc = "acc" in c  # absent where the file's loss defines no accuracy
        if c.get("on_grid", True):
            lines.append(f"  centre {at:<18} loss {_f(c['loss'])}" + (f"   acc {_f(c['acc'])}" if acc else ""))
        else:
            lines.append("  the centre (the trained model, at 0) is not on this grid; rings and basin radii are "
                         "measured from the point nearest to it")
            lines.append(f"  nearest {at:<17} loss {_f(c['loss'])}" + (f"   acc {_f(c['acc'])}" if acc else ""))
        m = s.get("minimum")
        if m:
            at = f"({_f(m['x'])}, {_f(m['y'])})" if two_d else f"({_f(m['x'])})"
            lines.append(f"  minimum {at:<17} loss {_f(m['loss'])}" + (f"   acc {_f(m.get('acc'))}" if acc else ""))
        if s.get("diverged_points"):
            lines.append(f"  diverged points: {s['diverged_points']}")
        if s.get("rings"):
            lines.append(f"  {'radius':>8} {'points':>7} {'mean loss':>11} {'increase':>11}")
            for r in s["rings"]:
                pts = f"{r['computed']}/{r['points']}"
                lines.append(
                    f"  {r['radius']:>8.4g} {pts:>7} {_f(r['mean_loss']):>11} {_f(r['mean_increase']):>11}"
                )
        if "basin_radius" in s:
            b = s["basin_radius"]
            parts = "  ".join(f"{k} {_f(v)}" for k, v in b.items())
            lines.append(f"  basin radius (loss > centre + {summary['threshold']:g}): {parts}")
    lines += _format_hessian(summary.get("hessian") or {}, two_d)
    grid = (summary["x_range"], summary["y_range"]) if "y_range" in summary else None
    lines += _format_trajectory(summary.get("trajectory") or {}, grid)
    return "\n".join(lines)


def _format_trajectory(t: dict, grid: tuple | None) -> list[str]:
    if not t:
        return []
    ratio = t.get("explained_variance_ratio")
    head = "[trajectory] PCA plane"
    if ratio:
        shares = [("-" if v is None else labels.percent(v)) for v in ratio]
        head += f": PC1 explains {shares[0]} of the variance, PC2 {shares[1]}"
    lines = ["", head]
    runs = t.get("runs") or []
    width = max([len(r["name"]) for r in runs] + [0])
    for r in runs:
        err = "-" if r["mean_error"] is None else labels.percent(r["mean_error"])
        line = f"  {r['name']:<{width}}  {r['checkpoints']:>4} checkpoints   mean error {err}"
        if r.get("outside_grid"):
            line += f"   ({r['outside_grid']} outside the grid)"
        lines.append(line)
    xr, yr = t.get("paths_x_range"), t.get("paths_y_range")
    if any(r.get("outside_grid") for r in runs) and xr and yr and grid:
        lines.append(f"  the paths span PC1 {xr[0]:.3g} to {xr[1]:.3g}, PC2 {yr[0]:.3g} to {yr[1]:.3g}; "
                     f"the grid PC1 {grid[0][0]:.3g} to {grid[0][1]:.3g}, PC2 {grid[1][0]:.3g} to {grid[1][1]:.3g}")
    return lines


def _format_hessian(h: dict, two_d: bool) -> list[str]:
    lines = []
    m = h.get("maps")
    if m:
        lines += ["", f"[hessian maps] {labels.hessian_setup(m)}: {100 * m['fraction_done']:.1f}% done "
                      f"({m['points_done']} of {m['points']} points)"]
        at = m["max_ratio_at"]
        where = "" if at is None else f" at ({_f(at['x'])}, {_f(at['y'])})" if two_d else f" at ({_f(at['x'])})"
        lines.append(f"  max |min/max| {_f(m['max_ratio'])}{where}  (over the computed points)")
        c = m["centre"]
        if c["ratio"] is not None or c["max_eig"] is not None:
            lines.append(f"  centre: max eigenvalue {_f(c['max_eig'], '.5g')}   "
                         f"min eigenvalue {_f(c['min_eig'], '.5g')}   |min/max| {_f(c['ratio'])}")
    c = h.get("centre")
    if c:
        top = ", ".join(_f(v, ".5g") for v in c["top_eigenvalues"]) or "-"
        probes = labels.trace_method(c)
        lines += ["", f"[hessian at the centre] {labels.hessian_setup(c, c.get('parameters'))}",
                  f"  top eigenvalues   {top}",
                  f"  min eigenvalue    {_f(c['min_eigenvalue'], '.5g')}",
                  f"  |min/max|         {_f(c['ratio_min_max'])}",
                  f"  trace             {_f(c['trace'], '.5g')} +- {_f(c['trace_stderr'], '.2g')}{probes}"]
    return lines
