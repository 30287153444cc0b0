"""The numbers of `make paper` and, from them, whether each claim held.

Every measure is defined here once (and printed in the report with its rule); a verdict is
a comparison of measured numbers against the rule, never written by hand. The functions
take plain arrays and numbers, so the rules are tested on constructed surfaces whose answer
is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.paper.plan import CLAIM_TITLES

BASIN_RISE = 1.0  # basin radius: where the train loss exceeds the centre's by this much
PATH_VARIANCE = 0.40  # claim 5: PC1 + PC2 explain at least this much


def sharpness(x: np.ndarray, loss: np.ndarray, at: float) -> float:
    """Curvature of a 1-D loss curve at the grid point `at`, from its neighbours: the mean over
    the sides whose neighbouring grid point is computed of 2 (L(at +- h) - L(at)) / h^2, h that
    point's distance. For a parabola a t^2 + b t + c around `at` the two sides give 2a exactly
    and one side 2a +- 2b/h (b is ~0 at a minimiser); one side serves where the other is not
    computed (past the end of an interpolation whose BatchNorm variances turned negative).
    Larger = sharper. (A parabola fitted over a wider window turns negative on a narrow dip
    between high walls, e.g. the end of an interpolation.)"""
    x, loss = np.asarray(x, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    k = int(np.argmin(np.abs(x - at)))
    if not np.isfinite(loss[k]):
        raise ValueError(f"sharpness at {at}: the loss there is not computed")
    sides = [2 * (loss[j] - loss[k]) / (x[j] - x[k]) ** 2 for j in (k - 1, k + 1)
             if 0 <= j < x.size and np.isfinite(loss[j])]
    if not sides:
        raise ValueError(f"sharpness at {at}: neither neighbour is computed")
    return float(np.mean(sides))


def local_minima(loss: np.ndarray) -> int:
    """The number of interior grid points whose loss is lower than all 8 neighbours' (the
    measure of a chaotic surface: a convex-looking bowl has one, at most). Points with a
    neighbour not computed are not counted."""
    z = np.asarray(loss, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 3:
        raise ValueError(f"local_minima needs a 2-D grid of at least 3 x 3, not {z.shape}")
    centre = z[1:-1, 1:-1]
    ok = np.isfinite(centre)
    lower = np.ones_like(centre, dtype=bool)
    ny, nx = z.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            nb = z[1 + dy:ny - 1 + dy, 1 + dx:nx - 1 + dx]
            ok &= ~np.isnan(nb)
            lower &= centre < nb
    return int((ok & lower).sum())


def basin_radius(x: np.ndarray, y: np.ndarray, loss: np.ndarray, rise: float = BASIN_RISE) -> dict:
    """The mean, over the four half-axes from the centre (x = y = 0), of the distance at which
    the train loss first exceeds the centre's by `rise`: the `summary` verb's basin radii. A
    half-axis that never exceeds it counts as its full length (`censored` names those)."""
    from losslandscape.render.summary import split_summary
    from losslandscape.surfacefile.read import Surface

    x, y, z = (np.asarray(a, dtype=np.float64) for a in (x, y, loss))
    surface = Surface(Path("constructed"), x, y, {"train_loss": z}, {"train": 1.0}, "")
    found = split_summary(surface, "train", rise)["basin_radius"]
    length = {"x+": x.max(), "x-": -x.min(), "y+": y.max(), "y-": -y.min()}
    radii = {side: float(abs(length[side]) if r is None else r) for side, r in found.items()}
    censored = [side for side, r in found.items() if r is None]
    return {"mean": float(np.mean(list(radii.values()))), "sides": radii, "censored": censored}


def ratio_stats(max_eig: np.ndarray, min_eig: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """|min/max| eigenvalue ratio over a Hessian map (points with max > 0): its mean, and its
    value at the centre."""
    mx, mn = np.asarray(max_eig, dtype=np.float64), np.asarray(min_eig, dtype=np.float64)
    ok = np.isfinite(mx) & np.isfinite(mn) & (mx > 0)
    ratio = np.where(ok, np.abs(mn) / np.where(ok, mx, 1.0), np.nan)
    i0, j0 = int(np.argmin(np.abs(np.asarray(x)))), int(np.argmin(np.abs(np.asarray(y))))
    return {"mean": float(np.nanmean(ratio)) if ok.any() else float("nan"),
            "centre": float(ratio[j0, i0]), "points": int(ok.sum())}


def _claim(n: int, rule: str, parts: list[tuple[str, bool]], numbers: dict) -> dict:
    return {"claim": n, "title": CLAIM_TITLES[n], "rule": rule, "held": all(h for _, h in parts),
            "parts": [{"text": t, "held": bool(h)} for t, h in parts], "numbers": numbers}


def claim1(interp: dict[str, float], line: dict[str, float], norm: dict[str, float], test_error: dict[str, float]) -> dict:
    """interp[f"{size}-{wd}"]: the sharpness of the minimiser `size` (sb, lb) on the line between
    the two (weight decay wd0 / wd); line[...]: its sharpness along a filter-normalised random
    direction; norm[...]: its weights' L2 norm; test_error[...]: percent."""
    looks_flatter = {wd: ("sb" if interp[f"sb-{wd}"] < interp[f"lb-{wd}"] else "lb") for wd in ("wd0", "wd")}
    flip = looks_flatter["wd0"] != looks_flatter["wd"]
    other = {"sb": "lb", "lb": "sb"}
    norms = all(norm[f"{looks_flatter[wd]}-{wd}"] > norm[f"{other[looks_flatter[wd]]}-{wd}"] for wd in ("wd0", "wd"))
    filt = all(line[f"sb-{wd}"] < line[f"lb-{wd}"] for wd in ("wd0", "wd"))
    generalise = all(test_error[f"sb-{wd}"] <= test_error[f"lb-{wd}"] for wd in ("wd0", "wd"))
    parts = [
        (f"the linear interpolation's flatter-looking minimiser flips with weight decay "
         f"(without: {looks_flatter['wd0']}, with: {looks_flatter['wd']})", flip),
        ("in each setting the flatter-looking minimiser has the larger weight norm", norms),
        ("filter-normalised, the small-batch minimiser is the flatter one with and without weight decay", filt),
        ("and it has the lower test error in both", generalise),
    ]
    rule = ("sharpness = 2 (L(x +- h) - L(x)) / h^2 of the train loss at the minimiser x, h one grid step, averaged "
            "over the computed sides (the curvature of a parabola through the neighbours; on the interpolation "
            "line, and along a filter-normalised random direction); held when all four parts hold")
    numbers = {"interpolation_sharpness": interp, "filter_normalised_sharpness": line, "weight_norm": norm,
               "test_error": test_error, "looks_flatter": looks_flatter}
    return _claim(1, rule, parts, numbers)


def claim2(minima: dict[str, int], depths: list[int]) -> dict:
    """minima[f"resnet{d}"], minima[f"resnet{d}_noshort"]: local minima of each 2-D surface."""
    lo, hi = min(depths), max(depths)
    grows = minima[f"resnet{hi}_noshort"] > minima[f"resnet{lo}_noshort"]
    skip = minima[f"resnet{hi}"] < minima[f"resnet{hi}_noshort"]
    parts = [(f"without shortcuts the surface has more local minima at depth {hi} than at {lo}", grows),
             (f"at depth {hi} the network with shortcuts has fewer local minima than the one without", skip)]
    rule = ("chaos = the number of interior grid points of the 2-D train-loss surface that are lower than all "
            "8 neighbours (a convex-looking bowl has one); held when both parts hold")
    return _claim(2, rule, parts, {"local_minima": minima, "depths": list(depths)})


def claim3(radius: dict[str, dict], widths: list[int], test_acc: dict[str, float]) -> dict:
    """radius[name]: `basin_radius` of the 2-D surface of wide ResNet-56 `name` (k = 1 is resnet56)."""
    def name(k: int, short: str) -> str:
        return f"resnet56{short}" if k == 1 else f"wrn56_{k}{short}"

    lo, hi = min(widths), max(widths)
    parts = []
    for short, what in (("", "with"), ("_noshort", "without")):
        r_lo, r_hi = radius[name(lo, short)]["mean"], radius[name(hi, short)]["mean"]
        parts.append((f"{what} shortcuts the basin radius grows from k = {lo} ({r_lo:.3g}) to k = {hi} ({r_hi:.3g})",
                      r_hi > r_lo))
    rule = (f"basin radius = the mean distance from the centre, along the four half-axes, at which the train loss "
            f"exceeds the centre's by {BASIN_RISE:g} (the summary verb's; a half-axis that never does counts as its "
            "length); held when it grows with width with and without shortcuts")
    return _claim(3, rule, parts, {"basin_radius": radius, "widths": list(widths), "test_acc": test_acc})


def claim4(ratios: dict[str, dict], shallow: str, deep: str) -> dict:
    """ratios[name]: `ratio_stats` of the Hessian maps of the shallow and the deep no-shortcut net."""
    s, d = ratios[shallow], ratios[deep]
    parts = [(f"the mean |min/max| ratio is larger for {deep} ({d['mean']:.3g}) than for {shallow} ({s['mean']:.3g})",
              d["mean"] > s["mean"]),
             (f"on {deep}'s map the ratio at the minimiser ({d['centre']:.3g}) is below the map's mean", d["centre"] < d["mean"])]
    rule = ("ratio = |lambda_min / lambda_max| of the Hessian at each point of a 2-D map (0: locally convex); "
            "held when both parts hold")
    return _claim(4, rule, parts, {"ratio": ratios})


def claim5(explained: list[float]) -> dict:
    """explained: the explained-variance ratios of PC1 and PC2 of the training trajectory."""
    total = float(explained[0] + explained[1])
    parts = [(f"PC1 and PC2 explain {100 * total:.1f}% of the trajectory's variance "
              f"(at least {100 * PATH_VARIANCE:.0f}%)", total >= PATH_VARIANCE)]
    rule = (f"the first two principal components of (checkpoint - final model) explain at least "
            f"{100 * PATH_VARIANCE:.0f}% of the variance (the paper reports 40-90%)")
    return _claim(5, rule, parts, {"explained_variance_ratio": [float(v) for v in explained[:2]], "pc12": total})
