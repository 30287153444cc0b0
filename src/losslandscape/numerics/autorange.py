"""The range of an "auto" axis for random, Hessian and file directions.

Starting at the centre (the trained model), step outward along the axis's
direction, doubling the step, until the loss has grown by `grid.auto_factor`;
then bisect between the last step that had not grown and the first that had.
Both rays (+ and -) are searched and the axis is the symmetric range
-reach..reach with reach the larger of the two, so that both ends meet the
factor for a loss that rises away from the centre. The search evaluates a
subsample of the first split (`grid.auto_samples`), on the CPU, once, when the
file is made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from losslandscape.errors import UserError

START = 0.01  # the first step out
LIMIT = 100.0  # the farthest the search looks
REL_TOL = 0.02  # the crossing is bracketed to within this fraction of the reach
MAX_HALVINGS = 60  # a loss that grows at every t > 0 (a jump at the centre) still ends
DIGITS = 3  # the reach is rounded up to this many significant digits (a readable grid)


def grown(loss: float, target: float) -> bool:
    """The loss has reached the target; a NaN or infinite loss counts as grown."""
    return not math.isfinite(loss) or loss >= target


def reach(loss_at: Callable[[float], float], centre_loss: float, factor: float, start: float = START,
          limit: float = LIMIT, rel_tol: float = REL_TOL, axis: str = "x", sign: int = 1) -> tuple[float, int]:
    """(t, evaluations) along one ray, loss_at(t) for t > 0: the step doubles from `start` until
    loss_at(t) >= factor * centre_loss (capped at `limit`), then the bracket is bisected until
    (hi - lo) <= rel_tol * hi. Returns hi, a t where the loss has grown by the factor, at most
    rel_tol above the crossing. `axis` and `sign` only name the ray in the error."""
    target = factor * centre_loss
    lo, hi, evaluations = 0.0, start, 0
    while True:
        value = loss_at(hi)
        evaluations += 1
        if grown(value, target):
            break
        if hi >= limit:
            raise UserError(f"grid.{axis}: the loss along {axis} did not grow by grid.auto_factor = {factor:g} within "
                            f"|{axis}| <= {limit:g} (centre loss {centre_loss:.4g}, at {sign * limit:g}: "
                            f'{value:.4g}); give "lo:hi:n"')
        lo, hi = hi, min(2 * hi, limit)
    for _ in range(MAX_HALVINGS):
        if hi - lo <= rel_tol * hi:
            break
        mid = 0.5 * (lo + hi)
        evaluations += 1
        if grown(loss_at(mid), target):
            hi = mid
        else:
            lo = mid
    return hi, evaluations


def round_up(t: float, digits: int = DIGITS) -> float:
    """t rounded up to `digits` significant digits: 0.38712 -> 0.388 (0.391 stays 0.391, also
    when its binary value is a hair above)."""
    quantum = 10.0 ** (math.floor(math.log10(t)) - digits + 1)
    return float(f"{math.ceil(t / quantum - 1e-9) * quantum:.{digits}g}")


def auto_range(evaluator, split: str, axis: str, factor: float, start: float = START, limit: float = LIMIT,
               rel_tol: float = REL_TOL) -> dict:
    """Search both rays of `axis` ("x": along dx with b = 0, "y": along dy with a = 0) with the
    evaluator's directions set; returns the numbers of the search (JSON-able). `reach` is the
    larger of `plus` and `minus`, rounded up to DIGITS significant digits; `loss_plus` and
    `loss_minus` are the losses at +reach and -reach, the ends of the axis."""
    losses: dict[float, float] = {}

    def loss(coordinate: float) -> float:
        if coordinate not in losses:
            a, b = (coordinate, 0.0) if axis == "x" else (0.0, coordinate)
            losses[coordinate] = float(evaluator.evaluate(a, b, [split])[split][0])
        return losses[coordinate]

    t0 = time.perf_counter()
    centre = loss(0.0)
    if not (math.isfinite(centre) and centre > 0):
        raise UserError(f'grid.{axis}: "auto" needs a positive loss at the centre to grow from, and the {split} loss '
                        f'there is {centre:.4g}; give "lo:hi:n"')
    plus, _ = reach(lambda t: loss(t), centre, factor, start, limit, rel_tol, axis, 1)
    minus, _ = reach(lambda t: loss(-t), centre, factor, start, limit, rel_tol, axis, -1)
    end = round_up(max(plus, minus))
    result = {"axis": axis, "split": split, "samples": evaluator.examples(split), "factor": factor,
              "centre_loss": centre, "plus": plus, "minus": minus, "reach": end,
              "loss_plus": loss(end), "loss_minus": loss(-end), "rel_tol": rel_tol}
    result["evaluations"] = len(losses)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
