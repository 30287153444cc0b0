"""Loss and accuracy of a model moved to grid points `theta + a*dx + b*dy`.

Performance design: the data set sits on the device once; the weights are moved
in place on the device (base + a*dx + b*dy) instead of rebuilding the model or
copying weights from the host per point; no autograd; large batches; the loss
is summed on the device and read back once per point and split.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from .fold import fold
from .losses import get_loss

Split = tuple[torch.Tensor, torch.Tensor]  # inputs (N, ...), targets (N,)


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

    Built before the surface file exists (so a model, data set or device that
    fails is found before anything is written); `set_directions` then gives it
    the stored directions, {name: tensor} over the entries of `tensors` (the live
    parameters or state entries the directions move, from
    `directions.target_tensors`). The model's current values are the base point.
    """

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 splits: dict[str, Split], device: torch.device, loss: str = "cross_entropy",
                 batch_size: int = 0, precision: Literal["fp32", "tf32", "bf16"] = "fp32",
                 fold_batchnorm: bool = True):
        self.model = model.eval()
        self.device = torch.device(device)
        self.loss = loss
        self.loss_fn = get_loss(loss)
        self.batch_size = batch_size_for(self.device, batch_size)
        self.precision = precision
        self.names = list(tensors)
        self.live = [tensors[k] for k in self.names]
        with torch.no_grad():
            self.base = [t.detach().clone() for t in self.live]
        self.dx: list[torch.Tensor] | None = None
        self.dy: list[torch.Tensor] | None = None
        self.splits = {name: (xs.to(self.device, non_blocking=True), ys.to(self.device, non_blocking=True))
                       for name, (xs, ys) in splits.items()}
        # the network that runs the forward passes: the model, or its BatchNorm-folded twin. The fold
        # is checked in fp32, before the precision is lowered, so a check never fails for rounding.
        self.net = self.model
        self.folding = "BatchNorm folding off (evaluation.fold_batchnorm = false)"
        if fold_batchnorm and self.splits:
            configure_precision("fp32")
            example = next(iter(self.splits.values()))[0][:8]
            self.net, self.folding = fold(self.model, example)
        configure_precision(precision)

    def set_directions(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None) -> None:
        with torch.no_grad():
            # empty_like keeps each tensor's memory format, so the in-place update stays cheap
            self.dx = [torch.empty_like(t).copy_(x[k]) for k, t in zip(self.names, self.live)]
            self.dy = [torch.empty_like(t).copy_(y[k]) for k, t in zip(self.names, self.live)] if y is not None else None

    @torch.no_grad()
    def move_to(self, a: float, b: float = 0.0) -> None:
        """Set the weights to base + a*dx + b*dy, in place on the device."""
        torch._foreach_copy_(self.live, self.base)
        if a != 0.0:
            torch._foreach_add_(self.live, self.dx, alpha=a)
        if self.dy is not None and b != 0.0:
            torch._foreach_add_(self.live, self.dy, alpha=b)
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
        inputs, targets = self.splits[split]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count, scored = 0, False
        with self._autocast():
            for start in range(0, len(targets), self.batch_size):
                # the loss in float32 whatever the autocast; the sums over batches in float64
                s, k, c = self.loss_fn(self.net(inputs[start:start + self.batch_size]).float(),
                                       targets[start:start + self.batch_size])
                loss_sum += s.double()
                count += k
                if c is not None:
                    correct += c
                    scored = True
        n = int(count)
        return loss_sum.item() / n, 100.0 * correct.item() / n if scored else float("nan")

    def evaluate(self, a: float, b: float, splits: list[str]) -> dict[str, tuple[float, float]]:
        self.move_to(a, b)
        return {split: self.measure(split) for split in splits}


def configure_precision(precision: str) -> None:
    """tf32 lets cuBLAS/cuDNN use TensorFloat-32 (GPU only); fp32 forbids it."""
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
