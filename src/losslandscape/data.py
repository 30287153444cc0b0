"""Data sets as whole tensors: (inputs (N, C, H, W) float32, targets (N,) int64).

A split is read once per process and kept (the evaluation moves it to its
device once); nothing streams per grid point.
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .userimport import import_factory

log = logging.getLogger(__name__)

BUILTIN = ("cifar10", "digits", "synthetic")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SIZE = 2000


def load_split(data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of one split of the spec's `[data]` table."""
    return _load(data.name, data.root, split, data.max_samples, data.seed)


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
    if max_samples and max_samples < len(targets):
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(targets), generator=gen)[:max_samples].sort().values
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
    result = import_factory(name, "data.name")(split)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise UserError(f"data.name: {name}({split!r}) must return (inputs, targets) tensors")
    inputs, targets = (torch.as_tensor(t) for t in result)
    if len(inputs) != len(targets):
        raise UserError(f"data.name: {name}({split!r}) gave {len(inputs)} inputs but {len(targets)} targets")
    return inputs.float(), targets.long()


def input_channels(data) -> int:
    """Channels of the data set's inputs, so that a zoo model can be built to fit."""
    if data.name == "digits":
        return 1
    if data.name in ("cifar10", "synthetic"):
        return 3
    return int(load_split(data, data.splits[0])[0].shape[1])
