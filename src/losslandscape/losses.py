"""The losses, by the name `evaluation.loss` gives them: the one definition that both the
evaluator (`evaluate.py`) averages and the Hessian (`hessian.py`) differentiates.

A loss maps one batch's (outputs, targets) to (the sum of its per-example losses, the number
of examples in that sum, the number classified correctly or None where accuracy means
nothing). Callers add up sums and counts over batches and divide once, so a stored value is
the exact mean over a split whatever the batch size. A loss computes in the dtype of the
outputs it is given: the caller chooses the precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

BatchSums = tuple[torch.Tensor, int | torch.Tensor, torch.Tensor | None]  # (sum, count, correct)
LossFunction = Callable[[torch.Tensor, torch.Tensor], BatchSums]


def _correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).sum()


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> BatchSums:
    """Outputs (N, C) logits, targets (N,) class indices."""
    return F.cross_entropy(outputs, targets, reduction="sum"), len(targets), _correct(outputs, targets)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> BatchSums:
    """The original code's MSE: softmax outputs (N, C) against one-hot targets (N,), mean over classes."""
    onehot = F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
    total = (outputs.softmax(dim=1) - onehot).pow(2).mean(dim=1).sum()
    return total, len(targets), _correct(outputs, targets)


LOSSES: dict[str, LossFunction] = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(name: str) -> LossFunction:
    """The loss called `name`; ValueError for a name that is not one."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}")
    return LOSSES[name]
