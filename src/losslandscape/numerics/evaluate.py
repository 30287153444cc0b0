"""Loss and accuracy of a model moved to grid points `theta + a*dx + b*dy`.

Performance design: a split in memory sits on the device once; the weights are moved
in place on the device (base + a*dx + b*dy, weights.py) instead of rebuilding the model or
copying weights from the host per point; no autograd; large batches; the loss
is summed on the device and read back once per point and split.

A streamed split (batches.Stream: a Dataset, DataLoader or iterable) is read once per work
unit, data outer and points inner: each batch is moved to the device once and evaluated at
every point of the unit, with per-point sums (`evaluate_unit`). The original code's way, a
full pass over the data per point, reads it once per point.

The evaluator is put together from pieces that each do one thing:
- `weights.WeightMover`: the moved tensors, their base point and directions; moves them;
- the data placement: each split's `Source.placed` on the device (inputs/batches.py);
- `network`: the network that runs the forward passes, the model or its BatchNorm-folded twin;
- `Precision`: the process-wide TF32 flags and the bf16 autocast;
- `Measurer`: a batch's loss sums at the current weights, every failure one line (`failure`);
- `Fit`: the tool's own checks of a batch against a Hugging Face model (labels, lengths);
- `probe`: each split's first batch through the network at the centre, before anything is written.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Literal

import torch

from losslandscape.errors import UserError, one_line
from losslandscape.inputs.batches import Batch, Source, input_dtype
from losslandscape.inputs.losses import IGNORE_INDEX, LossFunction, cross_entropy, get_loss, is_causal_lm_name
from losslandscape.numerics.fold import fold
from losslandscape.numerics.weights import WeightMover

log = logging.getLogger(__name__)

Values = dict[str, tuple[float, float]]  # {split: (mean loss, accuracy in percent or NaN)}


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
    point; every other tensor of the model is never written. `splits`: {name: batches.Source},
    placed on `device` here (channels-last images where asked).
    """

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 splits: dict[str, Source], device: torch.device, loss: str = "cross_entropy",
                 batch_size: int = 0, precision: Literal["fp32", "tf32", "bf16"] = "fp32",
                 fold_batchnorm: bool = True, channels_last: bool = False, cache_bytes: int = 1 << 30):
        self.model = model.eval()
        self.cache_bytes = cache_bytes  # host memory for a unit's streamed batches (evaluate_unit)
        self._told: set[str] = set()  # the streamed splits whose way through a unit has been logged
        self.device = torch.device(device)
        self.loss = loss
        loss_fn = get_loss(loss, model)
        self.batch_size = batch_size_for(self.device, batch_size)
        self.channels_last = channels_last
        self.weights = WeightMover(tensors)
        self.splits = {name: src.placed(self.device, channels_last, input_dtype(model)) for name, src in splits.items()}
        self.streamed = any(src.streamed for src in self.splits.values())  # a unit reads its data once: evaluate_unit
        first = {name: src.first_batch(self.batch_size) for name, src in self.splits.items()}
        # the fold is checked in fp32, before the precision is lowered, so a check never fails for rounding
        configure_precision("fp32")
        self.net, self.folding = network(self.model, next(iter(first.values()), None), fold_batchnorm)
        self.precision = Precision(precision, self.device)
        self.precision.apply()
        self.measurer = Measurer(self.net, loss_fn, self.precision, self.batch_size, Fit(self.model))
        # a model built on the meta device has no weights until it is sharded: probed then (`shard`)
        self._first = first if any(p.is_meta for p in model.parameters()) else None
        self.values = probe(self.measurer, first) if self._first is None else None
        # after a move, the folded twin recomputes its weights from the model's
        self._moved = self.net.refresh if self.net is not self.model else None
        self.share = None  # a shard.Share where this rank evaluates one model with others (`shard`)
        # a model to shard: rows_of(name, start, stop) reads its rows of a parameter built on the meta
        # device; whole: {name: whole moved tensor}, read one at a time (run/loading.py sets both)
        self.rows_of = self.whole = None

    def shard(self, share) -> tuple[int, int] | None:
        """Shard the model by rows over the default process group (shard.py), which this rank
        shares with `share.size - 1` others, before its directions are set: from now on it
        holds, moves and evaluates its share. A model built on the meta device gets its rows
        from `self.rows_of(name, start, stop)` here and is probed now (every rank of the group
        together). Returns (the parameter values this rank holds, the model's), or None where
        another rank of the group failed: the group agrees after filling and after each probed
        batch, so that no rank waits in a collective for one that has raised."""
        from losslandscape.numerics.shard import shard_model

        if self.net is not self.model:
            raise ValueError("a sharded model is evaluated unfolded")
        failed = None
        try:
            local, rows, held, total, units = shard_model(self.model, self.weights.names, self.device, self.rows_of)
        except Exception as exc:  # filling is this rank's own: every rank reaches the agreement below
            failed = exc
        self.rows_of = None  # read: the checkpoint is not kept open
        if share.any(failed is not None):
            if failed is not None:
                raise failed
            return None
        self.weights.shard(local, rows)
        self.share = share
        # FSDP keeps the root's gathered weights after a forward pass: a move frees them, so that
        # the next forward gathers the moved rows
        self._moved = lambda: [unit.reshard() for unit in units]
        if self._first is not None:
            with torch.inference_mode():
                self.values = probe(self.measurer, self._first, share.any)
            if self.values is None:
                return None
            self._moved()
            self._first = None
        return held, total

    @property
    def names(self) -> list[str]:
        """The names of the moved tensors."""
        return self.weights.names

    def set_directions(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None) -> None:
        self.weights.set_directions(x, y)

    def check_resolution(self, steps: dict[str, float], sample: int = 1 << 20) -> None:
        self.weights.check_resolution(steps, sample)

    def move_to(self, a: float, b: float = 0.0) -> None:
        """Set the weights to base + a*dx + b*dy, in place on the device."""
        self.weights.move_to(a, b)
        if self._moved is not None:
            self._moved()

    @torch.inference_mode()
    def measure(self, split: str) -> tuple[float, float]:
        """(mean loss, accuracy in percent; NaN for a loss without one) over the whole split at the
        current weights."""
        return self._measure_batches(split, self.splits[split].batches(self.batch_size))

    def _measure_batches(self, split: str, batches) -> tuple[float, float]:
        where = f"a batch of {split}"
        total = Totals(self.device)
        for batch, counted in self._mine(batches):
            sums = self.measurer.sums(batch, where)
            if counted:
                total.add(*sums)
        return self._result(total)

    def _mine(self, batches):
        """(batch, counted): every batch, or where the model is sharded, this rank's share."""
        return ((b, True) for b in batches) if self.share is None else self.share.mine(batches)

    def _result(self, total: "Totals") -> tuple[float, float]:
        return (total if self.share is None else total.summed(self.share)).result()

    def examples(self, split: str) -> int:
        """The number of examples of a split (of a stream: counted by reading it once)."""
        return self.splits[split].examples()

    def evaluate(self, a: float, b: float, splits: list[str]) -> Values:
        self.move_to(a, b)
        return {split: self.measure(split) for split in splits}

    @torch.inference_mode()
    def evaluate_unit(self, coords: list[tuple[float, float]], wanted: list[list[str]],
                      stop: Callable[[], bool] = lambda: False) -> list[Values] | None:
        """The values of several points ({split: (loss, acc)} for the splits each wants). Each
        streamed split is read once for the unit, held in host memory up to `cache_bytes`: where it
        fits, points outer (the weights move once per point, for every split the point wants);
        where it does not, data outer, points inner (once per batch per point). Splits in memory
        go with the points. None if `stop()` turned true (the unit's values are lost)."""
        out: list[Values] = [{} for _ in coords]
        held: dict[str, list[Batch] | None] = {}  # split -> its unit's batches (None: whole tensors)
        for split, src in self.splits.items():
            idx = [i for i, w in enumerate(wanted) if split in w]
            if not idx:
                continue
            if not src.streamed:
                held[split] = None
                continue
            batches, nbytes, rest = src.hold(self.cache_bytes)
            self._tell(split, len(batches), nbytes, rest is None)
            if rest is None:  # on the CPU placed once a unit, not at every point; on a GPU moved as used
                held[split] = [src.ready(b) for b in batches] if self.device.type == "cpu" else batches
                continue
            where = f"a batch of {split}"
            totals = {i: Totals(self.device) for i in idx}
            for batch, counted in self._mine(itertools.chain(batches, rest)):
                if stop():
                    return None
                batch = src.ready(batch)
                for i in idx:
                    self.move_to(*coords[i])
                    sums = self.measurer.sums(batch, where)
                    if counted:
                        totals[i].add(*sums)
            for i in idx:
                out[i][split] = self._result(totals[i])
        for i, w in enumerate(wanted):
            splits = [split for split in held if split in w]
            if not splits:
                continue
            if stop():
                return None
            self.move_to(*coords[i])
            for split in splits:
                out[i][split] = self.measure(split) if held[split] is None else self._measure_held(split, held[split])
        return out

    def _measure_held(self, split: str, batches: list[Batch]) -> tuple[float, float]:
        """`measure` over a unit's held batches of a streamed split."""
        src = self.splits[split]
        return self._measure_batches(split, (src.ready(b) for b in batches))

    def _tell(self, split: str, count: int, nbytes: int, fits: bool) -> None:
        """Log once per split how a unit goes through its streamed batches, and why."""
        if split in self._told:
            return
        self._told.add(split)
        budget = f"evaluation.cache_bytes = {self.cache_bytes:,}"
        if fits:
            log.info("%s is streamed: a unit holds its %d batches (%.1f MiB, within %s) and the weights move once "
                     "per point", split, count, nbytes / 2**20, budget)
        else:
            log.info("%s is streamed: its batches pass %s after %d batches (%.1f MiB), so each is read once a unit "
                     "and the weights move once per batch per point (data outer, points inner); raise "
                     "evaluation.cache_bytes to move them once per point", split, budget, count, nbytes / 2**20)

def network(model: torch.nn.Module, example: Batch | None, fold_batchnorm: bool) -> tuple[torch.nn.Module, str]:
    """(the network that runs the forward passes, why): the model's BatchNorm-folded twin where
    folding is asked for and the batches are one input tensor (`example`: a first batch), else
    the model itself."""
    if not fold_batchnorm or example is None:
        return model, "BatchNorm folding off (evaluation.fold_batchnorm = false)"
    if example.kwargs or len(example.args) != 1 or not isinstance(example.args[0], torch.Tensor):
        return model, "BatchNorm not folded: the batches are not a single input tensor"
    return fold(model, example.args[0][:8])


class Precision:
    """The evaluation's precision: "fp32", "tf32" (cuBLAS/cuDNN may use TensorFloat-32: flags for
    the whole process, set by `apply`) or "bf16" (autocast on a GPU)."""

    def __init__(self, name: Literal["fp32", "tf32", "bf16"], device: torch.device):
        self.name = name
        self.bf16 = name == "bf16" and device.type == "cuda"

    def apply(self) -> None:
        configure_precision(self.name)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def configure_precision(precision: str) -> None:
    """tf32 lets cuBLAS/cuDNN use TensorFloat-32 (GPU only); fp32 forbids it."""
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


class Measurer:
    """A batch's (loss sum, count, correct) through one network at its current weights."""

    def __init__(self, net: torch.nn.Module, loss_fn: LossFunction, precision: Precision, batch_size: int,
                 fit: "Fit | None" = None):
        self.net, self.loss_fn, self.precision, self.batch_size = net, loss_fn, precision, batch_size
        self.fit = fit if fit is not None else Fit(net)

    def sums(self, batch: Batch, where: str):
        """The loss's sums of `batch`; every failure is one line naming `where`."""
        self.fit.check(batch, where)
        try:
            with self.precision.autocast():
                return self.loss_fn(batch.call(self.net), batch.targets)
        except UserError:
            raise
        except Exception as exc:
            raise (self.fit.explain(batch, where) or failure(exc, where, self.batch_size)) from None


class Fit:
    """The tool's own checks of a batch against what a Hugging Face-style model takes, each one
    line naming the batch (the probe's first batch comes before anything is written):

    - `check`, before the forward: floating labels for a sequence (or image) classifier with more
      than one label and no `config.problem_type`, which Hugging Face would silently score as
      multi-label targets (binary cross-entropy per label): refused; a model whose config says
      "multi_label_classification" takes them.
    - `explain`, after a forward that raised: inputs longer than the model's positions
      (`config.n_positions` or `max_position_embeddings`), and token labels of another length
      than `input_ids` (a causal language model shifts its labels itself; a masked LM or a
      token classifier scores one label a token). None where neither explains the failure.
    """

    def __init__(self, model: torch.nn.Module):
        self.name = type(model).__name__
        config = getattr(model, "config", None)
        self.positions = next(((attr, getattr(config, attr)) for attr in ("n_positions", "max_position_embeddings")
                               if isinstance(getattr(config, attr, None), int)), None)
        self.token_labels = self.name.endswith(("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForTokenClassification"))
        labels = getattr(config, "num_labels", 0)
        # the classifiers whose loss follows config.problem_type, which their first forward sets
        # from the labels' dtype when it is unset
        self.guessing = (self.name.endswith("Classification") and not self.name.endswith("TokenClassification")
                         and hasattr(config, "problem_type") and config.problem_type is None
                         and isinstance(labels, int) and labels > 1)
        self.num_labels = labels

    def check(self, batch: Batch, where: str) -> None:
        labels = batch.kwargs.get("labels")
        if self.guessing and isinstance(labels, torch.Tensor) and labels.is_floating_point():
            raise UserError(f"evaluation: {where}: floating labels ({str(labels.dtype).removeprefix('torch.')}, "
                            f"shape {tuple(labels.shape)}) for {self.name} with {self.num_labels} labels, which "
                            "scores floating labels as multi-label targets (binary cross-entropy per label); "
                            "expected class indices (an integer tensor) for single-label classification, or set "
                            "the model's config.problem_type = \"multi_label_classification\" if that is meant")

    def explain(self, batch: Batch, where: str) -> UserError | None:
        ids = batch.kwargs.get("input_ids", batch.args[0] if batch.args else None)
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() < 2:
            ids = None
        if self.positions is not None and ids is not None and ids.shape[-1] > self.positions[1]:
            attr, most = self.positions
            return UserError(f"evaluation: {where}: inputs of {ids.shape[-1]} tokens (shape {tuple(ids.shape)}) are "
                             f"longer than the model's {most} positions (config.{attr}); expected sequences of at "
                             f"most {most} tokens: cut or split them")
        labels = batch.kwargs.get("labels")
        if self.token_labels and ids is not None and isinstance(labels, torch.Tensor) \
                and labels.shape != ids.shape:
            shifts = ("; the model shifts them itself to score each position against the next: labels = input_ids"
                      if is_causal_lm_name(self.name) else ", one label a token")
            return UserError(f"evaluation: {where}: labels of shape {tuple(labels.shape)} against input_ids of shape "
                             f"{tuple(ids.shape)}; expected labels of the inputs' shape{shifts} (-100 where "
                             "nothing is scored)")
        return None


def failure(exc: Exception, where: str, batch_size: int) -> UserError:
    """The one line for an evaluation that raised `exc` on `where`: out of GPU memory names the
    batch size to lower; anything else its type, message and the line it came from."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return UserError(f"evaluation: out of GPU memory on {where}; lower evaluation.batch_size (now {batch_size})")
    log.debug("evaluation failed on %s", where, exc_info=exc)
    return UserError(f"evaluation: {where} failed: {one_line(exc)}")


def probe(measurer: Measurer, first: dict[str, Batch], together=None) -> tuple[str, ...] | None:
    """The loss at the current weights (the centre) on each split's first batch: a shape, dtype or
    loss that does not fit is one line before anything is written. Returns the values a point
    has: ("loss", "acc") where the loss gives accuracy, else ("loss",). `together(failed)`: for a
    model sharded over a group, whether some rank of it failed on this batch (collective): the
    rank that failed raises, the others return None."""
    values = None
    for split, batch in first.items():
        _warn_labels_are_inputs(measurer, batch, split)
        try:
            s, k, c = measurer.sums(batch, f"the first batch of {split} at the centre")
        except Exception:
            if together is None or together(True):
                raise
        if together is not None and together(False):
            return None
        if not torch.isfinite(torch.as_tensor(s)).all() and not torch.isnan(torch.as_tensor(s)).all():
            log.warning("the loss on the first batch of %s at the centre is %s", split, float(s))
        if not float(k) > 0:
            raise UserError(f"evaluation.loss: the first batch of {split} has nothing to score (count {float(k):g})")
        has = ("loss", "acc") if c is not None else ("loss",)
        if values is not None and has != values:
            raise UserError("evaluation.loss: gives accuracy on one split and not on the other")
        values = has
    return values or ("loss", "acc")


def _warn_labels_are_inputs(measurer: Measurer, batch: Batch, split: str) -> None:
    """Token cross entropy scores position t against label t; labels equal to the input tokens
    wherever they are scored (Hugging Face's convention, where a causal model shifts them itself)
    would score every token against itself: a number, but not a language model's loss. One
    warning line."""
    if measurer.loss_fn is not cross_entropy:
        return
    targets = batch.targets
    tokens = batch.kwargs.get("input_ids", batch.args[0] if batch.args else None)
    if not (isinstance(targets, torch.Tensor) and isinstance(tokens, torch.Tensor) and targets.dim() >= 2
            and targets.shape == tokens.shape and not tokens.is_floating_point()):
        return
    targets = targets.to(tokens.device)
    scored = targets != IGNORE_INDEX  # labels ignored (padding, prompts) say nothing
    if scored.any() and torch.equal(targets[scored], tokens[scored].to(targets.dtype)):
        log.warning('%s: its labels equal its input tokens, and loss = "cross_entropy" scores each position '
                    "against its own label, so every token is scored against itself; give the next tokens "
                    'as labels, or use loss = "model" (the model shifts its labels itself)', split)


class Totals:
    """Sums of one point over batches, in float64 on the device (read back once): the loss, the
    counts (whole numbers, exact up to 2**53, or a loss's sums of weights) and the number (or
    weight) correct."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.scored = False

    def add(self, s, k, c) -> None:
        # the loss in float32 (or the model's float64) whatever the autocast; the sums in float64
        self.loss += torch.as_tensor(s).double()
        self.count += k
        if c is not None:
            self.correct += c
            self.scored = True

    def summed(self, share) -> "Totals":
        """These sums added over the ranks of a group (shard.Share)."""
        flag = torch.tensor(float(self.scored), dtype=torch.float64, device=self.loss.device)
        s = share.sum(torch.stack([self.loss, self.count, self.correct, flag]))
        out = Totals(self.loss.device)
        out.loss, out.count, out.correct = s[0], s[1], s[2]
        out.scored = bool(s[3].item() > 0)
        return out

    def result(self) -> tuple[float, float]:
        n = self.count.item()
        if not n > 0:
            raise UserError("evaluation: a split had nothing to score (no examples, or every target ignored)")
        return self.loss.item() / n, 100.0 * self.correct.item() / n if self.scored else float("nan")
