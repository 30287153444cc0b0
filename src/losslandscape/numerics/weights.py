"""Moving a model's weights to grid points: theta + a*dx + b*dy, in place on their device.

The moved tensors (`directions.moved_tensors`: live parameters or state entries) are set from
a copy of their base point and the two directions, never rebuilt or copied from the host per
point. Weights stored in bf16/fp16 keep their base in their own dtype and float32 directions:
a point's weights are computed in float32 from the base (exact in float32) and rounded once,
never `bf16 weight + small step`.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)

LOW_PRECISION = (torch.bfloat16, torch.float16)


class WeightMover:
    """The moved tensors of one model, their base point and the directions.

    Until `set_directions` the tensors' current values are the base point (nothing is copied
    yet: less memory while the surface file is made); every other tensor of the model is never
    written.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.names = list(tensors)
        self.live = [tensors[k] for k in self.names]
        self.low = [t.dtype in LOW_PRECISION for t in self.live]
        self.base: list[torch.Tensor] | None = None
        self.dx: list[torch.Tensor] | None = None
        self.dy: list[torch.Tensor] | None = None
        self.sx = self.sy = None  # directions drawn block by block as each tensor moves (`stream_directions`)
        self.rows: dict[str, tuple[int, tuple[int, ...]]] | None = None  # a shard's rows of each tensor (`shard`)

    def set_directions(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None) -> None:
        """Take the directions ({name: tensor}, read one name at a time) and copy the base point:
        the tensors must be at their base point (they are until the first move)."""
        with torch.no_grad():
            if self.base is None:  # in the weights' own dtype: bf16 is exact in float32, where a point is computed
                self.base = [t.detach().clone() for t in self.live]
            # empty_like keeps each tensor's memory format, so the in-place update stays cheap; float32 for
            # bf16/fp16 weights (a step is computed in float32), the weights' dtype otherwise
            self.dx = [self._direction(t, low).copy_(x[k]) for k, t, low in zip(self.names, self.base, self.low)]
            self.dy = ([self._direction(t, low).copy_(y[k]) for k, t, low in zip(self.names, self.base, self.low)]
                       if y is not None else None)

    def stream_directions(self, make) -> None:
        """Hold no whole direction: `make({name: base tensor})` gives (x, y or None), directions
        whose `blocks(name)` yield (start, stop, rows start:stop of the tensor's direction) on the
        CPU (directions.SeededDirection), drawn again at every move, block by block, while that
        tensor moves. The base is copied here, in the weights' own dtype."""
        with torch.no_grad():
            if self.base is None:
                self.base = [t.detach().clone() for t in self.live]
            self.sx, self.sy = make(dict(zip(self.names, self.base)))
            self.dx = self.dy = None

    def shard(self, local: dict[str, torch.Tensor], rows: dict[str, tuple[int, tuple[int, ...]]]) -> None:
        """Keep only this rank's rows of each tensor (a model sharded by rows: shard.py), before
        the directions are set: `local[name]` is the live shard, `rows[name]` (its first row in
        the whole tensor, the whole tensor's shape). The base and the directions then hold
        those rows only (`set_directions`, `stream_directions` with directions for `rows`)."""
        if self.base is not None:
            raise ValueError("a model is sharded before its directions are set")
        self.live = [local[k] for k in self.names]
        self.rows = rows

    @staticmethod
    def _direction(base: torch.Tensor, low: bool) -> torch.Tensor:
        return torch.empty_like(base, dtype=torch.float32) if low else torch.empty_like(base)

    @torch.no_grad()
    def move_to(self, a: float, b: float = 0.0) -> None:
        """Set the tensors to base + a*dx + b*dy, in place on the device."""
        if self.sx is not None:
            self._move_streamed(a, b)
            return
        if not any(self.low):
            torch._foreach_copy_(self.live, self.base)
            if a != 0.0:
                torch._foreach_add_(self.live, self.dx, alpha=a)
            if self.dy is not None and b != 0.0:
                torch._foreach_add_(self.live, self.dy, alpha=b)
            return
        for i, (live, base) in enumerate(zip(self.live, self.base)):
            w = base.float() if self.low[i] else live.copy_(base)  # float() of bf16: a float32 copy
            if a != 0.0:
                w.add_(self.dx[i], alpha=a)
            if self.dy is not None and b != 0.0:
                w.add_(self.dy[i], alpha=b)
            if self.low[i]:
                live.copy_(w)  # float32 -> bf16/fp16: one rounding

    def _sampled(self, held, drawn) -> list[torch.Tensor] | None:
        """A direction's tensors to sample for `check_resolution`: held whole, or where none is
        held the first block of rows of each low-precision tensor (a block starts at row 0)."""
        if held is not None or drawn is None:
            return held
        return [next(drawn.blocks(name))[2] if low else torch.zeros(0)
                for name, low in zip(self.names, self.low)]

    def _move_streamed(self, a: float, b: float) -> None:
        """move_to with directions drawn block by block: the same arithmetic, per block of rows
        (base + a*dx, then + b*dy, in float32 for bf16/fp16 weights and rounded once)."""
        for name, live, base, low in zip(self.names, self.live, self.base, self.low):
            xs = self.sx.blocks(name) if a != 0.0 else None
            ys = self.sy.blocks(name) if self.sy is not None and b != 0.0 else None
            if xs is None and ys is None:
                live.copy_(base)
                continue
            for parts in zip(*(blocks for blocks in (xs, ys) if blocks is not None)):
                start, stop = parts[0][0], parts[0][1]
                rows = (lambda t: t) if base.dim() == 0 else (lambda t: t[start:stop])
                w = rows(base).float() if low else rows(base).clone()
                steps = iter(parts)
                for alpha, blocks in ((a, xs), (b, ys)):
                    if blocks is not None:
                        w.add_(next(steps)[2].to(w.device, w.dtype).view(w.shape), alpha=alpha)
                rows(live).copy_(w)

    @torch.no_grad()
    def check_resolution(self, steps: dict[str, float], sample: int = 1 << 20) -> None:
        """Warn when an axis's step between grid points is below the resolution of bf16/fp16
        weights for most of them (the step would round away), naming a range that resolves.
        `steps`: {axis: (the grid's smallest spacing, its number of points)}."""
        for axis, (step, n), d in (("x", steps.get("x", (0, 0)), self._sampled(self.dx, self.sx)),
                                   ("y", steps.get("y", (0, 0)), self._sampled(self.dy, self.sy))):
            if not step or d is None or not any(self.low):
                continue
            needed = []  # per sampled weight: the step that moves it by half its spacing
            for base, di, low, live in zip(self.base, d, self.low, self.live):
                if not low:
                    continue
                w, v = base.reshape(-1)[:di.numel()], di.reshape(-1)  # held whole, or the first block drawn
                stride = max(1, w.numel() // sample)
                w, v = w[::stride].abs().float(), v[::stride].abs().float()
                keep = v > 0
                needed.append((0.5 * torch.finfo(live.dtype).eps * w[keep] / v[keep]).cpu())
            if not needed or not sum(len(t) for t in needed):
                continue
            median = float(torch.cat(needed).median())
            if step < median:
                scale = 10.0 ** (math.floor(math.log10(median * (n - 1) / 2)) - 2)
                reach = math.ceil(median * (n - 1) / 2 / scale) * scale  # rounded up to 3 digits: it resolves
                log.warning("grid.%s: its step %.3g is below the resolution of most %s weights (half of them "
                            "need a step of at least %.3g): the points would round to the same weights; a "
                            "range that resolves with %d points: \"-%.3g:%.3g:%d\"", axis, step,
                            next(t.dtype for t, low in zip(self.live, self.low) if low), median, n, reach, reach, n)
