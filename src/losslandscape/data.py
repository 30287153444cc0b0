"""The built-in data sets and a user's data factory, one split at a time.

A split in memory is (inputs, targets) tensors, read once per process and kept (the
evaluation moves it to its device once). A factory may instead give a Dataset, a DataLoader or
a re-iterable of batches: `load_source` then returns a batches.Stream, read once per work unit
(batches.py says what each form becomes).
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from .batches import Stream, stream_of, subset_indices
from .errors import UserError
from .userimport import import_factory

log = logging.getLogger(__name__)

BUILTIN = ("cifar10", "digits", "synthetic")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SIZE = 2000


Source = tuple[torch.Tensor, torch.Tensor] | Stream


def load_source(data, split: str, batch_size: int = 128, pin: bool = False) -> Source:
    """One split of the spec's `[data]` table: (inputs, targets) tensors, or a Stream of batches
    when the factory gives a Dataset, a DataLoader or an iterable (`batch_size`: a Dataset's loader's)."""
    if ":" in data.name:
        result = _factory_result(data.name, split)
        if not _is_pair(result):
            return stream_of(result, f"{data.name}({split!r})", batch_size_=batch_size, workers=data.workers,
                             pin=pin, max_samples=data.max_samples, seed=data.seed)
    return _load(data.name, data.root, split, data.max_samples, data.seed)


def load_split(data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of one split of the spec's `[data]` table, as whole tensors (training,
    the Hessian's data): a factory that gives a stream is one line."""
    source = load_source(data, split)
    if isinstance(source, Stream):
        raise UserError(f"data.name: {data.name}({split!r}) gives a stream of batches; this step needs the "
                        "split as (inputs, targets) tensors")
    return source


@functools.lru_cache(maxsize=8)
def _factory_result(name: str, split: str):
    """What a user's data factory returns for `split` (called once per process)."""
    return import_factory(name, "data.name")(split)


def _is_pair(result) -> bool:
    """(inputs, targets) as tensors or arrays: the in-memory fast path."""
    return (isinstance(result, tuple) and len(result) == 2
            and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in result))


@functools.lru_cache(maxsize=8)
def _load(name: str, root: str, split: str, max_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in ("train", "test"):
        raise UserError(f"data.splits: {split!r} is not valid; expected train or test")
    if name == "cifar10":
        inputs, targets = _cifar10(Path(root), split)
    elif name == "digits":
        inputs, targets = _digits(split)
    elif name == "synthetic":
        inputs, targets = _synthetic(split, max_samples or SYNTHETIC_SIZE, seed)
    elif ":" in name:
        inputs, targets = _factory(name, split)
    else:
        raise UserError(f"data.name: unknown data set {name!r}; choose one of "
                        f"{', '.join(BUILTIN)} or give \"package.module:factory\"")
    keep = subset_indices(len(targets), max_samples, seed)
    if keep is not None:
        keep = torch.tensor(keep, dtype=torch.long)
        inputs, targets = inputs[keep], targets[keep]
    log.debug("data %s/%s: %s inputs", name, split, tuple(inputs.shape))
    return inputs.contiguous(), targets.contiguous()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: CIFAR batches need no more."""

    # the original batches are Python 2 pickles (protocol 2); Python 3 writes bytes in protocol 2
    # through _codecs.encode, and numpy arrays in protocol 5 through _frombuffer
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar10(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    expected = "a cifar-10-batches-py folder with data_batch_1..5 and test_batch"
    if not root.is_dir():
        raise UserError(f"data.root: no such folder {str(root)!r}; expected {expected}")
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise UserError(f"data.root: {str(root)!r} has no file {name!r}; expected {expected}")
        try:
            with open(path, "rb") as fh:
                batch = _ArrayUnpickler(fh, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise UserError(f"data.root: {path} is not a CIFAR-10 python batch ({exc})") from None
        images.append(data)
        labels.append(lab)
    x = torch.from_numpy(np.concatenate(images)).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(np.concatenate(labels))


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8), pixels 0..16
    y = torch.from_numpy(bunch.target.astype(np.int64))
    # a fixed permutation, so that train and test never change between runs or machines
    order = np.random.default_rng(20180101).permutation(len(y))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    idx = torch.from_numpy(np.sort(order[:n_test] if split == "test" else order[n_test:]))
    x = (x / 16.0 - 0.5) / 0.5
    return x[idx], y[idx]


def _synthetic(split: str, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped Gaussian images with random labels: for benchmarks, not for science."""
    gen = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    return torch.randn(size, 3, 32, 32, generator=gen), torch.randint(0, 10, (size,), generator=gen)


def _factory(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A factory's (inputs, targets): floating inputs as float32, integer inputs (token ids) kept;
    integer targets as int64 (classes, tokens), floating targets as float32 (regression)."""
    inputs, targets = (torch.as_tensor(t) for t in _factory_result(name, split))
    if len(inputs) != len(targets):
        raise UserError(f"data.name: {name}({split!r}) gave {len(inputs)} inputs but {len(targets)} targets")
    if inputs.is_floating_point() or inputs.dtype == torch.bool:
        inputs = inputs.float()
    targets = targets.float() if targets.is_floating_point() else targets.long()
    return inputs, targets


def input_channels(data) -> int:
    """Channels of the data set's inputs, so that a zoo model can be built to fit."""
    if data.name == "digits":
        return 1
    if data.name in ("cifar10", "synthetic"):
        return 3
    source = load_source(data, data.splits[0])
    first = source.first().first_input if isinstance(source, Stream) else source[0]
    return int(first.shape[1]) if first is not None and first.dim() > 1 else 1
