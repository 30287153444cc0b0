"""The losses, by the name `evaluation.loss` gives them: the one definition that both the
evaluator (`evaluate.py`) averages and the Hessian (`hessian.py`) differentiates.

A loss maps one batch's (model outputs, targets) to (the sum of its per-example or per-token
losses, the number of terms in that sum (or their total weight), the number classified correctly
or None where accuracy means nothing). Callers add up sums and counts over batches and divide
once, so a stored value is the exact mean over a split, weighted by examples or tokens (or the
loss's weights), whatever the batch size: as if the split were one batch. Low-precision outputs
(bf16, fp16) are scored in float32; others in their own dtype (the Hessian's float64 stays
float64).

Outputs may be a tensor, an object with `.logits` (a Hugging Face ModelOutput), a dict with
"logits", or a tuple whose first element is the logits, or whose first element is a scalar
loss and whose second is the logits (a Hugging Face model given labels, with return_dict=False;
the model loss then takes that first element).

- cross_entropy: logits `(N, C)`, `(N, C, ...)` as torch lays them out (segmentation) or
  `(N, ..., C)` as language models give them, told apart by the targets' shape `(N, ...)`;
  targets are class or token indices of any integer type (a Dataset's int32 or uint8 labels
  are read as int64); entries equal to -100 are ignored (not counted).
  Accuracy: the fraction of counted targets whose index is the logits' arg-max.
- mse: with floating targets, the plain mean squared error of regression over every target
  element (no accuracy); with class indices, the original code's softmax outputs against
  one-hot targets, mean over classes (with accuracy).
- model: the model's own `outputs.loss` (a Hugging Face model given `labels`), a batch mean,
  weighted by its number of labels that are not -100 (one fewer per sequence for a causal
  language model, whose class name ends in ForCausalLM or LMHeadModel, as it scores each
  position against the next label); floating labels weight by examples. A batch with no label
  to score adds nothing (the model's 0/0 is not let through). No accuracy.
- "package.module:function": `function(outputs, targets)` returns either a scalar tensor, the
  mean over the batch's examples (weighted by the number of examples: len(targets)), or a
  tuple `(sum, count)` or `(sum, count, correct)`: exact for any weighting. The count is the
  weight of the batch: a number of examples or tokens, or a real sum of weights (class or
  token weights; >= 0 and finite, checked at one device synchronisation per batch that only a
  floating count pays); the mean is sum of sums / sum of counts. Accuracy only with `correct`,
  in the count's units (the weight of the correctly classified terms): sum of correct / sum
  of counts, a weighted accuracy where the count is weighted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from losslandscape.errors import UserError

BatchSums = tuple[torch.Tensor, float | torch.Tensor, float | torch.Tensor | None]  # (sum, count, correct)
LossFunction = Callable[[object, torch.Tensor], BatchSums]
IGNORE_INDEX = -100
LOW_PRECISION = (torch.bfloat16, torch.float16)


def logits_of(outputs) -> torch.Tensor:
    """The logits in a model's outputs, in float32 if they are bf16/fp16."""
    if isinstance(outputs, torch.Tensor):
        t = outputs
    elif isinstance(outputs, Mapping) and "logits" in outputs:
        t = outputs["logits"]
    elif isinstance(getattr(outputs, "logits", None), torch.Tensor):
        t = outputs.logits
    elif isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        # a Hugging Face model given labels with return_dict=False returns (loss, logits, ...)
        t = outputs[1] if _loss_first(outputs) else outputs[0]
    else:
        raise UserError(f"evaluation.loss: the model returned a {type(outputs).__name__}; expected a tensor, "
                        "outputs with .logits, a dict with 'logits' or a tuple starting with the logits (or "
                        "with a scalar loss and the logits)")
    return _scored_dtype(t)


def _loss_first(outputs) -> bool:
    """Whether a tuple of outputs starts with a scalar loss followed by the logits (a Hugging Face
    model's return_dict=False outputs when it was given labels)."""
    return (isinstance(outputs, (tuple, list)) and len(outputs) > 1 and isinstance(outputs[0], torch.Tensor)
            and outputs[0].dim() == 0 and isinstance(outputs[1], torch.Tensor) and outputs[1].dim() > 0)


def _scored_dtype(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 raised to float32; float32 and float64 kept."""
    return t.float() if t.dtype in LOW_PRECISION else t


def _need_targets(targets, loss: str) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise UserError(f"evaluation.loss: {loss} needs targets (the last element of a batch tuple, or "
                        "'labels' in a dict batch); the batch has none")
    return targets


def _indices(targets: torch.Tensor) -> torch.Tensor:
    # batches keep a Dataset's dtypes: numpy int32 or uint8 labels arrive as such, and torch's
    # cross_entropy and one_hot take int64 only
    return targets if targets.dtype == torch.int64 else targets.long()


def class_layout(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The logits as (N, C, ...) for targets (N, ...): torch's layout kept, (N, ..., C) moved."""
    torch_layout = logits.dim() == targets.dim() + 1 and logits.shape[0] == targets.shape[0] \
        and logits.shape[2:] == targets.shape[1:]
    last_layout = logits.dim() == targets.dim() + 1 and logits.shape[:-1] == targets.shape
    if torch_layout and last_layout and logits.dim() > 2:
        raise UserError(f"evaluation.loss: outputs {tuple(logits.shape)} against targets {tuple(targets.shape)} "
                        "could be (N, C, ...) or (N, ..., C); give a loss function that says which")
    if torch_layout:
        return logits
    if last_layout:
        return logits.movedim(-1, 1)
    positions = tuple(logits.shape[:-1])
    if logits.dim() == targets.dim() + 1 and targets.dim() >= 2 and positions[:-1] == tuple(targets.shape[:-1]) \
            and positions[-1] == targets.shape[-1] + 1:
        raise UserError(f"evaluation.loss: targets of shape {tuple(targets.shape)} are one position shorter than "
                        f"the logits {tuple(logits.shape)}; cross_entropy scores each position against the "
                        "target at that position: give a target for every position (for next-token loss the "
                        "next token, -100 at the last), or use loss \"model\" with labels = the inputs")
    raise UserError(f"evaluation.loss: outputs of shape {tuple(logits.shape)} do not fit targets of shape "
                    f"{tuple(targets.shape)}; expected logits (N, C, ...) or (N, ..., C) for targets (N, ...)")


def cross_entropy(outputs, targets) -> BatchSums:
    targets = _need_targets(targets, "cross_entropy")
    if targets.is_floating_point():
        raise UserError(f"evaluation.loss: cross_entropy needs class indices, the targets are {targets.dtype}; "
                        "for regression use mse, or give a loss function")
    targets = _indices(targets)
    logits = class_layout(logits_of(outputs), targets)
    scored = targets != IGNORE_INDEX
    total = F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)
    correct = ((logits.argmax(dim=1) == targets) & scored).sum()
    return total, scored.sum(), correct


def mse(outputs, targets) -> BatchSums:
    targets = _need_targets(targets, "mse")
    out = logits_of(outputs)
    if targets.is_floating_point():
        if out.shape != targets.shape:
            if out.numel() != targets.numel() or len(out) != len(targets):
                raise UserError(f"evaluation.loss: mse: outputs of shape {tuple(out.shape)} against targets of "
                                f"shape {tuple(targets.shape)}")
            out = out.reshape(targets.shape)
        return (out - targets.to(out.dtype)).pow(2).sum(), targets.numel(), None
    # the original code's MSE: softmax outputs (N, C) against one-hot targets (N,), mean over classes
    targets = _indices(targets)
    onehot = F.one_hot(targets, out.shape[1]).to(out.dtype)
    total = (out.softmax(dim=1) - onehot).pow(2).mean(dim=1).sum()
    return total, len(targets), (out.argmax(dim=1) == targets).sum()


def model_loss(causal: bool) -> LossFunction:
    """The model's own loss (see the module's docstring)."""
    def loss(outputs, targets) -> BatchSums:
        if _loss_first(outputs):  # return_dict=False with labels: (loss, logits, ...)
            value = outputs[0]
        else:
            value = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            if not isinstance(targets, torch.Tensor):
                raise UserError('evaluation.loss: "model": the model\'s outputs have no scalar `loss`; give it '
                                "its labels (a dict batch with 'labels') or choose another loss")
            raise UserError(f'evaluation.loss: "model": the model returned {_described(outputs)} without a scalar '
                            "loss although the batch has labels; expected outputs with .loss, a dict with 'loss' "
                            "or a tuple starting with the loss (a model that is called with the labels)")
        labels = _need_targets(targets, '"model"')
        value = _scored_dtype(value.reshape(()))
        if labels.is_floating_point():
            return value * len(labels), len(labels), None
        scored = labels[..., 1:] if causal else labels
        count = (scored != IGNORE_INDEX).sum()
        # a batch whose labels are all ignored has the mean 0/0 = NaN: it adds nothing (no sync)
        return torch.where(count > 0, value * count, torch.zeros_like(value)), count, None
    return loss


def _described(outputs) -> str:
    if isinstance(outputs, torch.Tensor):
        return f"a tensor of shape {tuple(outputs.shape)}"
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return f"a {type(outputs).__name__} starting with a tensor of shape {tuple(outputs[0].shape)}"
    return f"a {type(outputs).__name__}"


def user_loss(name: str) -> LossFunction:
    """A user's `module:function` under the contract of the module's docstring."""
    from losslandscape.inputs.userimport import import_factory

    fn = import_factory(name, "evaluation.loss")

    def loss(outputs, targets) -> BatchSums:
        result = fn(outputs, targets)
        if isinstance(result, torch.Tensor):
            if result.numel() != 1:
                raise UserError(f"evaluation.loss: {name} returned a tensor of shape {tuple(result.shape)}; "
                                "expected a scalar (the batch mean) or (sum, count[, correct])")
            n = len(targets) if isinstance(targets, torch.Tensor) and targets.dim() > 0 else 1
            return _scored_dtype(result.reshape(())) * n, n, None
        if isinstance(result, (tuple, list)) and len(result) in (2, 3):
            total = torch.as_tensor(result[0])
            if total.numel() != 1:
                raise UserError(f"evaluation.loss: {name} returned a sum of shape {tuple(total.shape)}; "
                                "expected a scalar")
            count = _amount(result[1], "count", name)
            correct = _amount(result[2], "number correct", name) if len(result) == 3 and result[2] is not None \
                else None
            return _scored_dtype(total.reshape(())), count, correct
        raise UserError(f"evaluation.loss: {name} returned a {type(result).__name__}; expected a scalar tensor "
                        "(the batch mean) or (sum, count[, correct])")
    return loss


def _amount(value, what: str, name: str) -> int | torch.Tensor:
    """A user's count (or number correct) as an int or an int64 tensor, or a weight (a real
    number >= 0) as a float or a float64 tensor: the evaluator adds them up in float64 (exact for
    whole numbers up to 2**53). A floating tensor is checked at one device synchronisation."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() \
            and value.dtype != torch.bool:
        value = value.reshape(())
        if not value.is_floating_point():
            return value.long()
        if bool(torch.isfinite(value) & (value >= 0)):
            return value.double()
        shown = float(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return value
        shown = value
    else:
        shown = f"a {type(value).__name__}" + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                                              else "")
    raise UserError(f"evaluation.loss: {name} returned the {what} {shown}; expected a number >= 0 (an int, a "
                    "float or a one-element tensor: a count, or a sum of weights)")


LOSSES: dict[str, LossFunction] = {"cross_entropy": cross_entropy, "mse": mse}


def is_causal_lm(model: torch.nn.Module) -> bool:
    return is_causal_lm_name(type(model).__name__)


def is_causal_lm_name(name: str) -> bool:
    """Whether a model class of this name scores each position against the next label
    (Hugging Face's naming)."""
    return name.endswith(("ForCausalLM", "LMHeadModel"))


def get_loss(name: str, model: torch.nn.Module | None = None) -> LossFunction:
    """The loss called `name` (`model`: the network whose own loss "model" takes)."""
    if name in LOSSES:
        return LOSSES[name]
    if name == "model":
        return model_loss(model is not None and is_causal_lm(model))
    if ":" in name:
        return user_loss(name)
    raise ValueError(f"unknown loss {name!r}")
