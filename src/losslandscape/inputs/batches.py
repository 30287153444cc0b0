"""Data as users have it, behind one interface: a split is a `Source`, either whole tensors in
memory (`InMemory`, the fast path: moved to the device once) or a stream of batches read again
for every work unit (`Stream`). Every stage asks the source (its batches, its first batch, how
many examples, the source on a device, a small share of it), never which kind it is.

What a data factory (or the Python interface's `data=`) may give, and what becomes of it:

- `(inputs, targets)` tensors or arrays: in memory, dtypes kept (integer targets become int64).
- a map-style `Dataset` (`__getitem__` and `__len__`): the tool builds the loader with
  `evaluation.batch_size`, `data.workers` processes, pinned memory on CUDA, no shuffling;
  `data.max_samples` keeps a fixed, seeded subset of the items (only those are read), and
  `data.parts` / `data.part` one contiguous part of them (`kept_indices`).
- a `DataLoader`: used as it is (its batch size and workers); one that shuffles is refused;
  `data.max_samples` and `data.parts` rebuild it, with its settings, over the items they keep
  of its data set.
- an `IterableDataset` (yields examples): batched by the tool's loader like a map-style Dataset;
  with `data.workers` > 0 each worker must read its own share (torch's `get_worker_info`).
  `data.max_samples` and `data.parts` are refused (no fixed subset).
- any re-iterable of batches (a list, an object whose `__iter__` starts over); a one-shot
  iterator or generator is refused (it can be read once only); so are `data.max_samples` and
  `data.parts`.

A batch is a tuple or list `(inputs..., targets)`, called as `model(*inputs)` and scored
against the last element; or a dict of tensors (Hugging Face style), called as
`model(**batch)` (every key, `labels` too) and scored against `batch["labels"]`; with
`data.input_keys` only those keys are passed (`model(**{k: batch[k] for k in input_keys})`),
and the targets are still `batch["labels"]`. The batch is moved to the device as a whole
structure.

Dtypes: whichever way the data comes (tensors or batches), the model gets its floating inputs
in its own floating dtype (`input_dtype`: that of its first floating parameter), so that a
float64 or bf16 model takes float64 or bf16 inputs and float64 arrays suit a float32 model
(rounded to float32, as `.float()` does); integer inputs (token ids), the targets and a dict's
`labels` keep their dtypes.

A stream whose first batch differs between two readings (a shuffling sampler, random
augmentation) is refused: the surface would be noise. An error raised while a batch is read
(items the loader cannot batch, such as PIL images; an item that raises, in a loader worker
too) is one line naming the data (`unreadable`).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from losslandscape.errors import UserError, one_line, user_frame

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One batch, ready to call the model with: `model(*args, **kwargs)`, scored against `targets`."""
    args: tuple
    kwargs: dict
    targets: Any  # a tensor, or None (a dict batch without labels)

    def call(self, model: torch.nn.Module):
        return model(*self.args, **self.kwargs)

    @property
    def first_input(self) -> torch.Tensor | None:
        values = list(self.args) + list(self.kwargs.values())
        return next((v for v in values if isinstance(v, torch.Tensor)), None)


LABELS = "labels"  # a dict batch's targets


def as_batch(obj, field: str = "data.name", input_keys: list[str] | tuple[str, ...] = (),
             what: str = "the data") -> Batch:
    """The Batch of one item a loader yields (`what`: the data it comes from); one line for a
    shape the tool cannot call a model with. `input_keys`: the keys of a dict batch passed to the
    model (empty: every key)."""
    if isinstance(obj, Mapping):
        if not input_keys:
            return Batch((), dict(obj), obj.get(LABELS))
        missing = [k for k in input_keys if k not in obj]
        if missing:
            raise UserError(f"data.input_keys: a batch has no {', '.join(map(repr, missing))}; its keys are "
                            f"{', '.join(map(repr, obj))}")
        return Batch((), {k: obj[k] for k in input_keys}, obj.get(LABELS))
    if input_keys:
        raise UserError(f"data.input_keys: the batches are {type(obj).__name__}s, not dicts; input_keys names the "
                        "keys of dict batches: leave it empty")
    if isinstance(obj, (tuple, list)):
        if len(obj) < 2:
            raise UserError(f"{field}: {what} gives a batch of {len(obj)} element(s); expected (inputs, ..., "
                            "targets) or a dict of tensors")
        return Batch(tuple(obj[:-1]), {}, obj[-1])
    raise UserError(f"{field}: {what} gives a batch that is a {type(obj).__name__}; expected a tuple (inputs, ..., "
                    "targets) or a dict of tensors")


def input_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype a model is given its floating inputs in: that of its first floating parameter
    (or buffer); None for a model without one (inputs as they come)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def to_device(obj, device: torch.device, channels_last: bool = False, dtype: torch.dtype | None = None):
    """The same structure with every tensor on `device`; with `dtype`, a Batch's floating inputs in
    that dtype (integer inputs, the targets and a dict's labels keep theirs)."""
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point() and obj.dtype != dtype:
            obj = obj.to(device, dtype, non_blocking=True)
        else:
            obj = obj.to(device, non_blocking=True)
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, Batch):
        kwargs = {k: to_device(v, device, channels_last, None if k == LABELS else dtype) for k, v in obj.kwargs.items()}
        return Batch(to_device(obj.args, device, channels_last, dtype), kwargs, to_device(obj.targets, device))
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, channels_last, dtype) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, channels_last, dtype) for v in obj)
    return obj


def same(a, b) -> bool:
    """Whether two batch structures hold equal tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, Batch):
        return isinstance(b, Batch) and same(a.args, b.args) and same(a.kwargs, b.kwargs) and same(a.targets, b.targets)
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


class Source(Protocol):
    """One split of data, as every stage sees it (the evaluator, the Hessian, the loaders)."""

    streamed: bool  # read again at every use (a unit reads it once, for all its points), not held whole

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Every batch, in order, on the source's device (`batch_size`: of whole tensors; a
        stream's loader has its own)."""

    def first_batch(self, batch_size: int) -> Batch:
        """The first batch, on the source's device (a stream's read twice: it must not change)."""

    def first_input(self) -> torch.Tensor | None:
        """An input tensor of the split (its first), to learn its shape; reads no more than one batch."""

    def examples(self) -> int:
        """The number of examples (a stream's counted by reading it once)."""

    def placed(self, device: torch.device, channels_last: bool = False, dtype: torch.dtype | None = None) -> "Source":
        """The same split on `device`, its images channels-last where asked, its floating inputs in
        `dtype` where given (the model's: `input_dtype`); whole tensors move once, here; a
        stream's batches as they are read."""

    def subsample(self, n: int) -> "Source":
        """About n examples of the split for a quick look (the auto range search), or all of it
        for n = 0: whole tensors keep n evenly spaced ones (index k * N // n), a stream its
        first batches up to n examples."""


class InMemory(NamedTuple):
    """One split as whole tensors: inputs (N, ...), targets (N, ...); still the (inputs, targets) pair."""

    inputs: torch.Tensor
    targets: torch.Tensor

    streamed = False

    def batches(self, batch_size: int) -> Iterator[Batch]:
        inputs, targets = self
        for start in range(0, len(targets), batch_size):
            yield Batch((inputs[start:start + batch_size],), {}, targets[start:start + batch_size])

    def first_batch(self, batch_size: int) -> Batch:
        return Batch((self.inputs[:batch_size],), {}, self.targets[:batch_size])

    def first_input(self) -> torch.Tensor:
        return self.inputs

    def examples(self) -> int:
        return len(self.targets)

    def placed(self, device: torch.device, channels_last: bool = False, dtype: torch.dtype | None = None) -> "InMemory":
        inputs = self.inputs
        if dtype is not None and inputs.is_floating_point() and inputs.dtype != dtype:
            inputs = inputs.to(dtype)
        # channels-last on the host, then one copy to the device
        inputs = inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs
        return InMemory(inputs.to(device, non_blocking=True), self.targets.to(device, non_blocking=True))

    def subsample(self, n: int) -> "InMemory":
        if not n or n >= len(self.targets):
            return self
        keep = torch.arange(n, dtype=torch.long) * len(self.targets) // n
        return InMemory(self.inputs[keep], self.targets[keep])


def in_memory(inputs: torch.Tensor, targets: torch.Tensor) -> InMemory:
    """(inputs, targets) given as a pair: as many targets as inputs, at least one (ValueError otherwise)."""
    if len(inputs) != len(targets) or len(targets) == 0:
        raise ValueError(f"need as many targets as inputs, at least one: got {len(inputs)} and {len(targets)}")
    return InMemory(inputs, targets)


def batch_nbytes(batch: Batch) -> int:
    """The bytes of a batch's tensors (inputs, keyword inputs, targets)."""
    parts = [*batch.args, *batch.kwargs.values(), batch.targets]
    return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))


class Stream:
    """One split as a re-iterable of batches (never held whole). Iterating it yields `Batch`es on
    the CPU; `batches` yields them on its device (`placed`)."""

    streamed = True

    def __init__(self, iterable: Iterable, what: str, field: str = "data.name", limit: int = 0,
                 device: torch.device | None = None, channels_last: bool = False,
                 input_keys: list[str] | tuple[str, ...] = (), dtype: torch.dtype | None = None):
        self.iterable, self.what, self.field, self.limit = iterable, what, field, limit
        self.device, self.channels_last, self.dtype = device, channels_last, dtype
        self.input_keys = tuple(input_keys)
        self._checked: Batch | None = None  # the first batch, once check_repeatable has read it twice

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        batches = _iterator(self.iterable, self.field, self.what)
        while True:
            try:
                raw = next(batches, _END)
            except UserError:
                raise
            except Exception as exc:
                batches = None  # a loader's workers end now, not when the error is collected
                raise unreadable(exc, self.field, self.what) from None
            if raw is _END:
                return
            batch = as_batch(raw, self.field, self.input_keys, self.what)
            yield batch
            seen += batch_size(batch)
            if self.limit and seen >= self.limit:
                return

    def batches(self, batch_size: int = 0) -> Iterator[Batch]:
        for batch in self:
            yield self.ready(batch)

    def hold(self, budget: int) -> tuple[list[Batch], int, Iterator[Batch] | None]:
        """One reading of the stream, held in host memory up to `budget` bytes: (its batches as
        read, their bytes, None) when the whole stream fits; else (the batches read so far, the
        first over the budget included, their bytes, the rest of the same reading). The batches
        are as the loader gives them (on the CPU): `ready` places each where it is used."""
        reading = iter(self)
        held, nbytes = [], 0
        for batch in reading:
            held.append(batch)
            nbytes += batch_nbytes(batch)
            if nbytes > budget:
                return held, nbytes, reading
        return held, nbytes, None

    def ready(self, batch: Batch) -> Batch:
        """A batch as read, on the stream's device (channels-last, the model's dtype) as used."""
        return batch if self.device is None else to_device(batch, self.device, self.channels_last, self.dtype)

    def first_batch(self, batch_size: int = 0) -> Batch:
        return self.ready(self.check_repeatable())

    def first_input(self) -> torch.Tensor | None:
        return self._checked.first_input if self._checked is not None else self.first().first_input

    def examples(self) -> int:
        return sum(batch_size(batch) for batch in self)

    def placed(self, device: torch.device, channels_last: bool = False, dtype: torch.dtype | None = None) -> "Stream":
        stream = Stream(self.iterable, self.what, self.field, self.limit, torch.device(device), channels_last,
                        self.input_keys, dtype)
        stream._checked = self._checked  # checked once is enough
        return stream

    def subsample(self, n: int) -> "Stream":
        return self.limited(n) if n else self

    def limited(self, examples: int) -> "Stream":
        """The same stream, stopping after the batch that reaches `examples` examples."""
        return Stream(self.iterable, f"the first {examples} examples of {self.what}", self.field, examples,
                      self.device, self.channels_last, self.input_keys, self.dtype)

    def first(self) -> Batch:
        try:
            return next(iter(self))
        except StopIteration:
            raise UserError(f"{self.field}: {self.what} gave no batch") from None

    def check_repeatable(self) -> Batch:
        """The first batch, read twice: a stream that changes between readings is refused.
        Kept once checked, so that later callers read nothing."""
        if self._checked is not None:
            return self._checked
        one, two = self.first(), self.first()
        if not same(one, two):
            raise UserError(f"{self.field}: {self.what} gives different batches on two readings (shuffling or "
                            "random augmentation); a surface needs the same data at every point: turn off "
                            "shuffling and random transforms")
        self._checked = one
        return one


_END = object()  # the end of a loader's batches


def _iterator(iterable, field: str, what: str) -> Iterator:
    # a DataLoader's iterator draws its workers' base seed from the global RNG: reading the
    # data must not move it (a fresh model is initialised from that RNG after a first read,
    # so the same spec would give another model with a Dataset than with tensors)
    try:
        with torch.random.fork_rng(devices=[]):
            return iter(iterable)
    except UserError:
        raise
    except Exception as exc:
        raise unreadable(exc, field, what) from None


def first_item(data, field: str, what: str):
    """The first thing `data` gives, without moving the global RNG: its item 0 where it is
    indexable and not iterable (a map-style Dataset), else its first batch (None if none); an
    error of the data is one line naming `field` and `what`."""
    try:
        first = data[0] if hasattr(data, "__getitem__") and not isinstance(data, Iterable) else None
        if first is None:
            first = next(_iterator(data, field, what), None)
        return first
    except UserError:
        raise
    except Exception as exc:
        raise unreadable(exc, field, what) from None


def unreadable(exc: Exception, field: str, what: str) -> UserError:
    """The one line for reading `what` that raised `exc` (a Dataset's item, the loader batching
    items, a loader's worker): for items the loader cannot batch (default_collate's TypeError:
    PIL images, strings, None) what a batch is made of; for anything else the error and the line
    of the user's code it came from. The error's frames are cleared once logged (-v): they hold
    the loader's iterator, whose workers would live as long as the error."""
    log.debug("reading %s failed", what, exc_info=exc)
    line = _unreadable(exc, field, what)
    traceback.clear_frames(exc.__traceback__)
    return UserError(line)


def _unreadable(exc: Exception, field: str, what: str) -> str:
    text = str(exc)
    frames = None
    if "Original Traceback" in text:  # raised in a loader's worker: its traceback is the message
        lines = [line for line in text.strip().splitlines() if line.strip()]
        frames = [(f, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)]
        text = lines[-1].split(": ", 1)[1] if ": " in lines[-1] else ""
    text = " ".join(text.split())
    if text.startswith("default_collate:") or "batch must contain" in text:
        hint = (": give the Dataset a transform such as torchvision.transforms.ToTensor()"
                if "PIL." in text else "")
        return (f"{field}: {what} gives items the loader cannot make a batch of ({text}); expected tensors, "
                f"numpy arrays or numbers (or tuples or dicts of them){hint}")
    if frames:
        file, line = user_frame(frames)
        cause = f"{type(exc).__name__}{': ' + text[:300] if text else ''} (at {Path(file).name}:{line})"
    else:
        cause = one_line(exc)
    return f"{field}: reading {what} failed: {cause}"


def batch_size(batch: Batch) -> int:
    t = batch.targets if isinstance(batch.targets, torch.Tensor) else batch.first_input
    return len(t) if isinstance(t, torch.Tensor) and t.dim() > 0 else 1


def stream_of(result, what: str, *, batch_size_: int, workers: int, pin: bool, max_samples: int, seed: int,
              field: str = "data.name", parts: int = 1, part: int = 0,
              input_keys: list[str] | tuple[str, ...] = ()) -> Stream:
    """A Stream over a factory's Dataset, DataLoader or re-iterable (see the module's docstring);
    `input_keys`: the keys of its dict batches passed to the model (empty: all)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Subset

    # the field that narrows the data, if any: a stream without fixed items cannot honour it
    narrowing = "data.max_samples" if max_samples else "data.parts" if parts > 1 else ""
    undo = "data.max_samples = 0" if max_samples else "data.parts = 1"
    if isinstance(result, DataLoader):
        if isinstance(result.sampler, RandomSampler) or (
                result.batch_sampler is not None and isinstance(result.batch_sampler.sampler, RandomSampler)):
            raise UserError(f"{field}: {what} is a DataLoader that shuffles; a surface needs the same data at "
                            "every point: give shuffle=False")
        if narrowing:
            if isinstance(result.dataset, IterableDataset):
                raise UserError(f"{narrowing}: {what} is a DataLoader over an IterableDataset, which has no "
                                f"fixed subset; set {undo} and limit the data yourself")
            keep = kept_indices(len(result.dataset), max_samples, seed, parts, part)
            if keep is not None:
                result = _over(result, Subset(result.dataset, keep))
        return Stream(result, what, field, input_keys=input_keys)
    if isinstance(result, IterableDataset):
        # it yields examples, not batches: batched here like a map-style Dataset's
        if narrowing:
            raise UserError(f"{narrowing}: {what} is an IterableDataset, which has no fixed subset; set "
                            f"{undo} and limit the data yourself")
        loader = DataLoader(result, batch_size=batch_size_, num_workers=workers, pin_memory=pin)
        return Stream(loader, what, field, input_keys=input_keys)
    if hasattr(result, "__getitem__") and hasattr(result, "__len__") and (
            isinstance(result, Dataset) or not hasattr(result, "__iter__") or isinstance(result, Subset)):
        keep = kept_indices(len(result), max_samples, seed, parts, part)
        dataset = Subset(result, keep) if keep is not None else result
        loader = DataLoader(dataset, batch_size=batch_size_, shuffle=False, num_workers=workers, pin_memory=pin)
        return Stream(loader, what, field, input_keys=input_keys)
    if isinstance(result, Iterable):
        if iter(result) is result:
            raise UserError(f"{field}: {what} is a one-shot iterator ({type(result).__name__}); give a "
                            "re-iterable: a list of batches, a DataLoader, a Dataset or a class whose __iter__ "
                            "starts over")
        if narrowing:
            raise UserError(f"{narrowing}: {what} is a plain iterable of batches, which has no fixed subset; "
                            f"give a Dataset or a DataLoader, or set {undo}")
        return Stream(result, what, field, input_keys=input_keys)
    raise UserError(f"{field}: {what} gave a {type(result).__name__}; expected (inputs, targets) tensors, a "
                    "Dataset, a DataLoader or a re-iterable of batches")


def _over(loader, dataset):
    """`loader`'s settings (batching, collation, workers and their start-up) over another data set."""
    from torch.utils.data import DataLoader

    # a loader built with a batch_sampler has batch_size None; its sampler's batch size is the one
    batch_size = loader.batch_size
    if batch_size is None:
        batch_size = getattr(loader.batch_sampler, "batch_size", None)
    workers = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers,
               "multiprocessing_context": loader.multiprocessing_context} if loader.num_workers else {}
    return DataLoader(dataset, batch_size=batch_size, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, **workers)


def subset_indices(n: int, max_samples: int, seed: int) -> list[int] | None:
    """The fixed, seeded subset `data.max_samples` keeps (sorted indices), or None for all."""
    if not max_samples or max_samples >= n:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:max_samples].sort().values.tolist()


def part_range(n: int, parts: int, part: int) -> tuple[int, int]:
    """[start, stop) of part `part` of `parts` equal contiguous parts of n items (data.py's
    docstring: len // parts items each, the last n % parts items in none)."""
    if parts == 1:
        return 0, n
    size = n // parts
    if size == 0:
        raise UserError(f"data.parts: {parts} parts of {n} items leave none in a part; expected at most {n} parts")
    return part * size, (part + 1) * size


def kept_indices(n: int, max_samples: int, seed: int, parts: int = 1, part: int = 0) -> list[int] | None:
    """The items of n that a split keeps (sorted indices), or None for all: the data.max_samples
    subset, then part `part` of it."""
    keep = subset_indices(n, max_samples, seed)
    if parts == 1:
        return keep
    items = keep if keep is not None else range(n)
    start, stop = part_range(len(items), parts, part)
    return list(items[start:stop])
