"""Loading the evaluator: this process's device, threads, model at its base point and data set
(evaluate.PointEvaluator), then the directions stored in a surface file. Also the small CPU
evaluator of the auto range search and the interpolation's report on its end points.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from losslandscape.inputs import data as datasets
from losslandscape.numerics import directions as dirs
from losslandscape.errors import UserError
from losslandscape.surfacefile.format import shown as ff_shown
from losslandscape.surfacefile.read import stored_directions, stored_seed
from losslandscape.inputs.checkpoints import build_and_load, build_on_meta
from losslandscape.numerics.devices import describe_device, omp_threads, pick_device, release_freed_memory, set_threads
from losslandscape.run.environment import allocated_gpus
from losslandscape.numerics.evaluate import PointEvaluator, batch_size_for, use_channels_last
from losslandscape.run.makedirections import base_model, built_on_meta, model_channels, versions

log = logging.getLogger(__name__)


def start_evaluator(spec, worker_index: int = 0, workers_on_node: int = 1, fold: bool | None = None,
                    sharded: bool = False):
    """This process's device (checked usable), threads, model and data, before the surface
    file is created or touched: a run that cannot start leaves nothing behind. `sharded`: the
    model is to be sharded over a group of ranks (evaluate.PointEvaluator.shard): FSDP takes
    contiguous parameters, and the folded twin would hold whole weights, so neither is used."""
    threads = set_threads(spec.evaluation.threads, workers_on_node)
    device = pick_device(spec.evaluation.device, worker_index, allocated_gpus())
    evaluator = load_evaluator(spec, device, fold=False if sharded else fold, sharded=sharded)
    if sharded:
        evaluator.folding = "BatchNorm not folded: the model is sharded (evaluation.ranks_per_model)"
    whence = " (OMP_NUM_THREADS)" if not spec.evaluation.threads and omp_threads() else ""
    log.info("evaluating on %s with %d CPU thread(s)%s, batch %d, %s; %s", describe_device(device),
             threads, whence, evaluator.batch_size, spec.evaluation.precision, evaluator.folding)
    return evaluator


def load_evaluator(spec, device: torch.device, checkpoint: str | None = None,
                   field: str = "model.checkpoint", fold: bool | None = None, sharded: bool = False) -> PointEvaluator:
    """The model at its base point on `device` (or at another `checkpoint`), with the data set
    there too (no directions yet).

    `sharded` (a model to shard over a group of ranks, PointEvaluator.shard): with a
    model.checkpoint, the model is built with its parameters on the meta device, and each
    rank reads its rows of them from the checkpoint when it is sharded (no rank ever holds
    the whole model; `evaluator.whole` reads a whole tensor at a time, for the seed's digests);
    without one (a fresh initialisation: nothing to read rows from), it is built whole, and
    `evaluator.whole` builds it again when the digests are checked."""
    batch = batch_size_for(device, spec.evaluation.batch_size)
    splits = {split: datasets.load_source(spec.data, split, batch, pin=device.type == "cuda")
              for split in spec.data.splits}
    fold = spec.evaluation.fold_batchnorm if fold is None else fold
    if sharded and checkpoint is None and built_on_meta(spec):
        model, rows = build_on_meta(spec.model, model_channels(spec))
        evaluator = _evaluator(spec, model, splits, device, fold, sharded)
        evaluator.rows_of, evaluator.whole = rows.rows, rows.only(evaluator.names)
        return evaluator
    model = base_model(spec) if checkpoint is None else build_and_load(
        spec.model, model_channels(spec), checkpoint=checkpoint, field=field)
    evaluator = _evaluator(spec, model, splits, device, fold, sharded)
    if sharded:
        evaluator.whole = _Rebuilt(spec, evaluator.names)
    return evaluator


class _Rebuilt(Mapping):
    """{name: moved tensor} of the model at its base point, built again whole on the CPU when
    first read: a sharded model without a checkpoint (its fresh initialisation has no rows to
    read), for the seed's digests."""

    def __init__(self, spec, names: list[str]):
        self.spec, self.names, self.tensors = spec, names, None

    def __getitem__(self, name: str) -> torch.Tensor:
        if self.tensors is None:
            self.tensors = dirs.moved_tensors(base_model(self.spec), self.spec.directions)
        return self.tensors[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _evaluator(spec, model: torch.nn.Module, splits: dict, device: torch.device, fold: bool,
               sharded: bool = False) -> PointEvaluator:
    """Channels-last where it is faster (not for a model to shard), the model on `device`, its
    moved tensors, the evaluator."""
    example = next(iter(splits.values())).first_batch(1).first_input
    channels_last = (example is not None and use_channels_last(device, example) and _has_conv(model)
                     and not sharded)
    if channels_last:
        # before the live tensors are collected: .to(memory_format) replaces the weights' storage
        model = model.to(memory_format=torch.channels_last)
    if not any(p.is_meta for p in model.parameters()):  # one built on the meta device is placed as it is sharded
        model = model.to(device)
    tensors = dirs.moved_tensors(model, spec.directions)
    return PointEvaluator(model, tensors, splits, device, spec.evaluation.loss, spec.evaluation.batch_size,
                          spec.evaluation.precision, fold, channels_last=channels_last,
                          cache_bytes=spec.evaluation.cache_bytes)


def _has_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def attach_directions(evaluator: PointEvaluator, f_or_path, hold: bool = True) -> None:
    """Give the evaluator the directions stored in a surface file (an open one, or a path),
    read tensor by tensor: the host never holds a whole direction besides the evaluator's.
    Directions stored as a seed are drawn again here, tensor by tensor, each checked against
    the file's SHA-256 (`Redrawn`); with `hold` false (evaluation.hold_directions) they are
    checked once, block by block, and the evaluator draws them again at every move.

    A model sharded over a group of ranks (groups.shard) gets this rank's rows of the
    directions only, a seed's digests checked first against the whole weights, a tensor at a
    time (`evaluator.whole`)."""
    seeded = stored_seed(f_or_path)
    if evaluator.share is not None:
        _attach_rows(evaluator, f_or_path, hold, seeded)
        return
    if seeded is not None:
        record, made_with = seeded
        where = f_or_path.filename if hasattr(f_or_path, "filename") else str(f_or_path)
        if not hold:
            def make(base):
                x, y = redrawn(record, made_with, base, where)
                for d in (x, y) if y is not None else (x,):
                    d.check_blocks()
                return x.direction, (None if y is None else y.direction)

            evaluator.weights.stream_directions(make)
            log.info("directions drawn again at every point, block by block (evaluation.hold_directions = false)")
            return
        weights = dict(zip(evaluator.weights.names, evaluator.weights.live))
        evaluator.set_directions(*redrawn(record, made_with, weights, where))
        return
    with stored_directions(f_or_path) as (x, y):
        evaluator.set_directions(_Lazy(x), _Lazy(y) if y is not None else None)


def _attach_rows(evaluator: PointEvaluator, f_or_path, hold: bool, seeded) -> None:
    """attach_directions for a sharded model: check, then this rank's rows only."""
    if seeded is not None:
        share = evaluator.share
        _check_digests(evaluator.whole, f_or_path, seeded, share.rank, share.size)
    evaluator.whole = None  # a model built again for the check goes now
    release_freed_memory()  # the tensors read whole for the check
    rows = evaluator.weights.rows
    if seeded is None:
        with stored_directions(f_or_path) as (x, y):
            counts = {k: (t.shape[0] if t.dim() else 1) for k, t in zip(evaluator.weights.names, evaluator.weights.live)}
            evaluator.set_directions(_Lazy(x, rows, counts), _Lazy(y, rows, counts) if y is not None else None)
        return
    record = seeded[0]

    def pair(weights):
        return dirs.SeededDirection.pair(weights, record.seed, record.norm, record.ignore, record.sha256.shape[1] == 2,
                                         record.same_dir, record.orthogonal_coef, rows)

    if hold:
        evaluator.set_directions(*pair(dict(zip(evaluator.weights.names, evaluator.weights.live))))
    else:
        evaluator.weights.stream_directions(pair)
        log.info("directions drawn again at every point, block by block, this rank's rows only "
                 "(evaluation.hold_directions = false)")


def _check_digests(whole: Mapping[str, torch.Tensor], f_or_path, seeded, rank: int, size: int) -> None:
    """Draw a seed file's directions against the whole weights (read a tensor at a time), block
    by block, each tensor checked against its SHA-256 (nothing is kept). The ranks of a group
    share the work: rank r of `size` checks the tensors r, r + size, ... (every tensor is
    checked by one rank of every group; a rank that finds one different fails the attach
    step, which every rank agrees on)."""
    record, made_with = seeded
    where = f_or_path.filename if hasattr(f_or_path, "filename") else str(f_or_path)
    for d in redrawn(record, made_with, whole, where):
        if d is not None:
            d.check_blocks(list(d.direction)[rank::size])


def redrawn(record, made_with: dict[str, str], weights: Mapping[str, torch.Tensor], where: str):
    """(x, y or None) drawn again from a file's seed record against the base weights they move,
    each tensor checked against its recorded SHA-256 when read; one line (UserError) where the
    record is for other tensors, another scheme, or a tensor comes out different."""
    if set(record.names) != set(weights):
        other = sorted(set(record.names) ^ set(weights))
        raise UserError(f"{where}: its directions were drawn for other tensors than this model moves "
                        f"({len(record.names)} against {len(weights)}, e.g. {ff_shown(other[0])}); expected the "
                        "model the file was made with")
    if record.scheme != dirs.SCHEME:
        raise UserError(f"{where}: its directions were drawn by another scheme ({ff_shown(record.scheme)[:120]}); "
                        f"this version draws them by: {dirs.SCHEME}")
    x, y = dirs.SeededDirection.pair(weights, record.seed, record.norm, record.ignore, record.sha256.shape[1] == 2,
                                     record.same_dir, record.orthogonal_coef)
    index = {k: i for i, k in enumerate(record.names)}
    return (Redrawn(x, record, 0, index, made_with, where),
            None if y is None else Redrawn(y, record, 1, index, made_with, where))


class Redrawn:
    """{name: tensor} of a direction drawn again, each tensor checked against the file's digest."""

    def __init__(self, direction, record, axis: int, index: dict[str, int], made_with: dict[str, str], where: str):
        self.direction, self.record, self.axis, self.index = direction, record, axis, index
        self.made_with, self.where = made_with, where

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self.direction[name]
        if dirs.tensor_sha256({name: t}, name) != self.record.sha256[self.index[name], self.axis].tobytes():
            self._differs(name)
        return t

    def check_blocks(self, names: list[str] | None = None) -> None:
        """Draw every tensor (or those `names`) once, block by block (never a whole direction),
        and check its SHA-256."""
        for name in self.direction if names is None else names:
            if dirs.tensor_sha256(self.direction, name) != self.record.sha256[self.index[name], self.axis].tobytes():
                self._differs(name)

    def _differs(self, name: str) -> None:
        now = versions()
        raise UserError(
            f"{self.where}: the {'xy'[self.axis]} direction of tensor {ff_shown(name)} drawn again from seed "
            f"{self.record.seed} differs from the one the file was made with (SHA-256); made with numpy "
            f"{self.made_with.get('numpy', '?')} and torch {self.made_with.get('torch', '?')}, drawn here with "
            f"numpy {now['numpy']} and torch {now['torch']}; compute this surface where it was made, or make it "
            'again with directions.store = "file"')


class _Lazy:
    """{name: float32 tensor} over stored directions, each read when asked for; with `rows`
    (a shard's: {name: (first row, the whole shape)}), only those rows are read."""

    def __init__(self, arrays, rows=None, counts=None):
        self.arrays, self.rows, self.counts = arrays, rows, counts

    def __getitem__(self, name: str) -> torch.Tensor:
        if self.rows is None:
            return torch.from_numpy(self.arrays[name])
        first, shape = self.rows[name]
        return torch.from_numpy(self.arrays.rows(name, first, self.counts[name], shape))


def auto_search_evaluator(spec) -> PointEvaluator:
    """A fresh model at the centre on this process's CPU with grid.auto_samples evenly spaced
    samples (index k * N // n) of the first split of data.splits (0: all of them); of a
    streamed split, its first batches up to grid.auto_samples examples."""
    split = spec.data.splits[0]
    device = torch.device("cpu")
    source = datasets.load_source(spec.data, split, batch_size_for(device, spec.evaluation.batch_size))
    source = source.subsample(spec.grid.auto_samples)
    # the spec's precision, not fp32: configure_precision sets process-wide flags that this process's
    # own evaluator (built before the directions) runs under
    return _evaluator(spec, base_model(spec), {split: source}, device, spec.evaluation.fold_batchnorm)


def endpoint_report(spec, evaluator: PointEvaluator) -> None:
    """For an interpolation: log the values at x = 0 and x = 1 (and y = 1 with model.checkpoint3)
    next to each checkpoint's own values, and warn when x = 1 is not the second model (or y = 1
    the third: BatchNorm statistics left behind)."""
    far = [("x", (1.0, 0.0), "model.checkpoint2", spec.model.checkpoint2, "second")]
    if spec.model.checkpoint3:
        far.append(("y", (0.0, 1.0), "model.checkpoint3", spec.model.checkpoint3, "third"))
    for axis, (a, b), field, path, nth in far:
        other = load_evaluator(spec, evaluator.device, checkpoint=path, field=field)
        worst = 0.0
        for split in spec.data.splits:
            centre = evaluator.evaluate(0.0, 0.0, [split])[split]
            rows = [(0, centre, centre, "model.checkpoint")] if axis == "x" else []
            rows.append((1, evaluator.evaluate(a, b, [split])[split], other.measure(split), field))
            for at, (loss, acc), (own_loss, own_acc), key in rows:
                log.info("interpolation %s %s = %d: loss %.6g, accuracy %.2f%%; %s itself: loss %.6g, "
                         "accuracy %.2f%%", split, axis, at, loss, acc, key, own_loss, own_acc)
                worst = max(worst, abs(loss - own_loss) / max(abs(own_loss), 1e-12))
        if worst > 1e-3:
            log.warning("%s = 1 is not the %s model (loss off by %.0f%%): with directions.dir_type = %r the "
                        "BatchNorm running statistics stay those of model.checkpoint; use dir_type = \"states\"",
                        axis, nth, 100 * worst, spec.directions.dir_type)
