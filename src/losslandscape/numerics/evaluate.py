"""Loss and accuracy of a model moved to grid points `theta + a*dx + b*dy`.

Performance design: a split in memory sits on the device once; the weights are moved
in place on the device (base + a*dx + b*dy) instead of rebuilding the model or
copying weights from the host per point; no autograd; large batches; the loss
is summed on the device and read back once per point and split.

A streamed split (batches.Stream: a Dataset, DataLoader or iterable) is read once per work
unit, data outer and points inner: each batch is moved to the device once and evaluated at
every point of the unit, with per-point sums (`evaluate_unit`). The original code's way, a
full pass over the data per point, reads it once per point.

Weights stored in bf16/fp16 keep a float32 base and float32 directions: a point's weights are
computed in float32 and rounded once, never `bf16 weight + small step`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Literal

import torch

from losslandscape.inputs.batches import Batch, Stream, to_device
from losslandscape.errors import UserError, one_line
from losslandscape.numerics.fold import fold
from losslandscape.inputs.losses import get_loss

log = logging.getLogger(__name__)

Split = tuple[torch.Tensor, torch.Tensor] | Stream  # inputs (N, ...), targets (N, ...); or a stream
LOW_PRECISION = (torch.bfloat16, torch.float16)


def batch_size_for(device: torch.device, requested: int = 0) -> int:
    """The spec's batch size, or the default that measured fastest for the device."""
    if requested:
        return requested
    return 1024 if torch.device(device).type == "cuda" else 128


def use_channels_last(device: torch.device, example: torch.Tensor) -> bool:
    """Channels-last convolutions: 1.5-2.5x faster on the CPU for CIFAR ResNets (make bench)."""
    return torch.device(device).type == "cpu" and example.dim() == 4


class PointEvaluator:
    """Owns one model on one device and evaluates it at grid points.

    Built before the surface file exists (so a model, data set, loss or device that fails is
    found before anything is written: `probe` runs the first batch of each split through the
    model and the loss at the centre); `set_directions` then gives it the stored directions,
    {name: tensor} over the entries of `tensors` (the live parameters or state entries the
    directions move, from `directions.moved_tensors`). The model's current values are the base
    point; every other tensor of the model is never written.
    """

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 splits: dict[str, Split], device: torch.device, loss: str = "cross_entropy",
                 batch_size: int = 0, precision: Literal["fp32", "tf32", "bf16"] = "fp32",
                 fold_batchnorm: bool = True, channels_last: bool = False):
        self.model = model.eval()
        self.device = torch.device(device)
        self.loss = loss
        self.loss_fn = get_loss(loss, model)
        self.batch_size = batch_size_for(self.device, batch_size)
        self.precision = precision
        self.channels_last = channels_last
        self.names = list(tensors)
        self.live = [tensors[k] for k in self.names]
        self.base: list[torch.Tensor] | None = None  # copied when the directions come (less memory meanwhile)
        self.low = [t.dtype in LOW_PRECISION for t in self.live]
        self.dx: list[torch.Tensor] | None = None
        self.dy: list[torch.Tensor] | None = None
        self.splits = {name: src if isinstance(src, Stream) else
                       (src[0].to(self.device, non_blocking=True), src[1].to(self.device, non_blocking=True))
                       for name, src in splits.items()}
        self.streamed = any(isinstance(src, Stream) for src in self.splits.values())
        # the network that runs the forward passes: the model, or its BatchNorm-folded twin. The fold
        # is checked in fp32, before the precision is lowered, so a check never fails for rounding.
        self.net = self.model
        self.folding = "BatchNorm folding off (evaluation.fold_batchnorm = false)"
        first = {name: self._first_batch(name) for name in self.splits}
        example = next(iter(first.values()), None)
        if fold_batchnorm and example is not None:
            if example.kwargs or len(example.args) != 1 or not isinstance(example.args[0], torch.Tensor):
                self.folding = "BatchNorm not folded: the batches are not a single input tensor"
            else:
                configure_precision("fp32")
                self.net, self.folding = fold(self.model, example.args[0][:8])
        configure_precision(precision)
        self.values = self.probe(first)

    def _first_batch(self, split: str) -> Batch:
        """The split's first batch on the device (a stream's read twice: it must not change)."""
        src = self.splits[split]
        if isinstance(src, Stream):
            return to_device(src.check_repeatable(), self.device, self.channels_last)
        return Batch((src[0][:self.batch_size],), {}, src[1][:self.batch_size])

    def probe(self, first: dict[str, Batch]) -> tuple[str, ...]:
        """The loss at the centre on each split's first batch: a shape, dtype or loss that does not
        fit is one line before anything is written. Returns the values a point has: ("loss", "acc")
        where the loss gives accuracy, else ("loss",)."""
        values = None
        for split, batch in first.items():
            s, k, c = self._sums(batch, f"the first batch of {split} at the centre")
            if not torch.isfinite(torch.as_tensor(s)).all() and not torch.isnan(torch.as_tensor(s)).all():
                log.warning("the loss on the first batch of %s at the centre is %s", split, float(s))
            if int(k) <= 0:
                raise UserError(f"evaluation.loss: the first batch of {split} has nothing to score (count {int(k)})")
            has = ("loss", "acc") if c is not None else ("loss",)
            if values is not None and has != values:
                raise UserError("evaluation.loss: gives accuracy on one split and not on the other")
            values = has
        return values or ("loss", "acc")

    def _sums(self, batch: Batch, where: str):
        """(loss sum, count, correct) of one batch at the current weights; every failure is one line."""
        try:
            with self._autocast():
                return self.loss_fn(batch.call(self.net), batch.targets)
        except UserError:
            raise
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"evaluation: out of GPU memory on {where}; lower evaluation.batch_size "
                            f"(now {self.batch_size})") from None
        except Exception as exc:
            log.debug("evaluation failed on %s", where, exc_info=True)
            raise UserError(f"evaluation: {where} failed: {one_line(exc)}") from None

    def set_directions(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None) -> None:
        """Take the directions ({name: tensor}, read one name at a time) and copy the base point:
        the model must be at its base point (it is until the first move)."""
        with torch.no_grad():
            if self.base is None:
                # a float32 base for bf16/fp16 weights: each point is computed in float32, rounded once
                self.base = [t.detach().float() if low else t.detach().clone() for t, low in zip(self.live, self.low)]
            # empty_like keeps each tensor's memory format, so the in-place update stays cheap
            self.dx = [torch.empty_like(t).copy_(x[k]) for k, t in zip(self.names, self.base)]
            self.dy = [torch.empty_like(t).copy_(y[k]) for k, t in zip(self.names, self.base)] if y is not None else None

    @torch.no_grad()
    def check_resolution(self, steps: dict[str, float], sample: int = 1 << 20) -> None:
        """Warn when an axis's step between grid points is below the resolution of bf16/fp16
        weights for most of them (the step would round away), naming a range that resolves.
        `steps`: {axis: (the grid's smallest spacing, its number of points)}."""
        for axis, (step, n), d in (("x", steps.get("x", (0, 0)), self.dx), ("y", steps.get("y", (0, 0)), self.dy)):
            if not step or d is None or not any(self.low):
                continue
            needed = []  # per sampled weight: the step that moves it by half its spacing
            for base, di, low, live in zip(self.base, d, self.low, self.live):
                if not low:
                    continue
                w, v = base.reshape(-1), di.reshape(-1)
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

    @torch.no_grad()
    def move_to(self, a: float, b: float = 0.0) -> None:
        """Set the weights to base + a*dx + b*dy, in place on the device."""
        if not any(self.low):
            torch._foreach_copy_(self.live, self.base)
            if a != 0.0:
                torch._foreach_add_(self.live, self.dx, alpha=a)
            if self.dy is not None and b != 0.0:
                torch._foreach_add_(self.live, self.dy, alpha=b)
        else:
            for i, (live, base) in enumerate(zip(self.live, self.base)):
                w = base.clone() if self.low[i] else live.copy_(base)
                if a != 0.0:
                    w.add_(self.dx[i], alpha=a)
                if self.dy is not None and b != 0.0:
                    w.add_(self.dy[i], alpha=b)
                if self.low[i]:
                    live.copy_(w)  # float32 -> bf16/fp16: one rounding
        if self.net is not self.model:
            self.net.refresh()

    def _autocast(self):
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def measure(self, split: str) -> tuple[float, float]:
        """(mean loss, accuracy in percent; NaN for a loss without one) over the whole split at the
        current weights."""
        src = self.splits[split]
        total = Totals(self.device)
        if isinstance(src, Stream):
            for batch in src:
                total.add(*self._sums(to_device(batch, self.device, self.channels_last), f"a batch of {split}"))
            return total.result()
        inputs, targets = src
        for start in range(0, len(targets), self.batch_size):
            batch = Batch((inputs[start:start + self.batch_size],), {}, targets[start:start + self.batch_size])
            total.add(*self._sums(batch, f"a batch of {split}"))
        return total.result()

    def examples(self, split: str) -> int:
        """The number of examples of a split (of a stream: counted by reading it once)."""
        src = self.splits[split]
        if not isinstance(src, Stream):
            return len(src[1])
        from losslandscape.inputs.batches import batch_size as examples_in
        return sum(examples_in(batch) for batch in src)

    def evaluate(self, a: float, b: float, splits: list[str]) -> dict[str, tuple[float, float]]:
        self.move_to(a, b)
        return {split: self.measure(split) for split in splits}

    @torch.inference_mode()
    def evaluate_unit(self, coords: list[tuple[float, float]], wanted: list[list[str]],
                      stop: Callable[[], bool] = lambda: False) -> list[dict[str, tuple[float, float]]] | None:
        """The values of several points ({split: (loss, acc)} for the splits each wants). In-memory
        splits: point by point. Streamed splits: data outer, points inner, each batch read once for
        the whole unit. None if `stop()` turned true during a stream (the unit's values are lost)."""
        out: list[dict[str, tuple[float, float]]] = [{} for _ in coords]
        for split, src in self.splits.items():
            idx = [i for i, w in enumerate(wanted) if split in w]
            if not idx:
                continue
            if not isinstance(src, Stream):
                for i in idx:
                    self.move_to(*coords[i])
                    out[i][split] = self.measure(split)
                continue
            totals = {i: Totals(self.device) for i in idx}
            for batch in src:
                if stop():
                    return None
                batch = to_device(batch, self.device, self.channels_last)
                for i in idx:
                    self.move_to(*coords[i])
                    totals[i].add(*self._sums(batch, f"a batch of {split}"))
            for i in idx:
                out[i][split] = totals[i].result()
        return out


class Totals:
    """Sums of one point over batches: the loss in float64, counts and correct as integers, on
    the device (read back once)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.scored = False

    def add(self, s, k, c) -> None:
        # the loss in float32 (or the model's float64) whatever the autocast; the sums in float64
        self.loss += torch.as_tensor(s).double()
        self.count += k
        if c is not None:
            self.correct += c
            self.scored = True

    def result(self) -> tuple[float, float]:
        n = int(self.count)
        if n <= 0:
            raise UserError("evaluation: a split had nothing to score (no examples, or every target ignored)")
        return self.loss.item() / n, 100.0 * self.correct.item() / n if self.scored else float("nan")


def configure_precision(precision: str) -> None:
    """tf32 lets cuBLAS/cuDNN use TensorFloat-32 (GPU only); fp32 forbids it."""
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
