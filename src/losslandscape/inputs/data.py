"""The built-in data sets and a user's data factory, one split at a time.

`load_source` gives a split as a batches.Source. In memory: (inputs, targets) tensors
(batches.InMemory), read once per process and kept (the evaluation moves it to its device
once). A factory may instead give a Dataset, a DataLoader or a re-iterable of batches: then a
batches.Stream, read once per work unit (batches.py says what each form becomes). An image
folder (imagefolder.py) is a Dataset too.

data.transform (cifar10 and imagefolder): "standard" normalises with CIFAR_MEAN / CIFAR_STD
(cifar10) or the ImageNet statistics (imagefolder); "original" with the original code's
CIFAR-10 constants, ORIGINAL_CIFAR_MEAN / ORIGINAL_CIFAR_STD (its cifar10/dataloader.py and
dataloader.py: [125.3, 123.0, 113.9] / 255 and [63.0, 62.1, 66.7] / 255, which differ from
ours by up to 2e-4), and for imagefolder the same as "standard" (the original has no ImageNet
loader); "raw" leaves the pixels in [0, 1] (the original --raw_data).

data.parts / data.part (the original --data_split / --split_idx): each split (after the
data.max_samples subset) is cut into `parts` contiguous parts of len // parts items, and part
`part` is evaluated: items [part * m, (part + 1) * m) with m = len // parts; the last
len % parts items belong to no part. The original keeps len // data_split items too (the
remainder dropped), but of the train split only (it evaluated no test split) and drawn at
random with numpy's seed 0 whatever --split_idx says, so that all its parts are one and the
same subset; here the parts are disjoint and together cover the split.
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from losslandscape.inputs.batches import InMemory, Source, kept_indices, stream_of
from losslandscape.errors import UserError
from losslandscape.inputs.userimport import import_factory

log = logging.getLogger(__name__)

BUILTIN = ("cifar10", "digits", "synthetic", "imagefolder")
TRANSFORMED = ("cifar10", "imagefolder")  # the data sets data.transform applies to
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
ORIGINAL_CIFAR_MEAN = tuple(v / 255.0 for v in (125.3, 123.0, 113.9))
ORIGINAL_CIFAR_STD = tuple(v / 255.0 for v in (63.0, 62.1, 66.7))
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SIZE = 2000


def check(data) -> None:
    """The `[data]` fields that depend on each other (one line naming the field otherwise)."""
    if data.transform != "standard" and data.name not in TRANSFORMED:
        raise UserError(f"data.transform: {data.transform!r} applies to the cifar10 and imagefolder data sets only, "
                        f"not to {data.name!r}; leave it \"standard\"")
    if data.parts < 1:
        raise UserError(f"data.parts: {data.parts} is not valid; expected an integer >= 1")
    if not 0 <= data.part < data.parts:
        raise UserError(f"data.part: {data.part} is not valid; expected 0 to {data.parts - 1} "
                        f"(data.parts = {data.parts})")
    if data.name == "imagefolder" and data.image_size < 1:
        raise UserError(f"data.image_size: {data.image_size} is not valid; expected an integer >= 1")


def check_classes(spec) -> None:
    """A zoo model's model.num_classes against the class folders of an image folder (one line
    naming both otherwise); other data sets are not inspected."""
    if spec.data.name != "imagefolder" or ":" in spec.model.name:
        return
    from losslandscape.inputs.imagefolder import ImageFolder

    for split in spec.data.splits:
        classes = ImageFolder(spec.data.root, split, spec.data.image_size, spec.data.transform).classes
        if len(classes) != spec.model.num_classes:
            raise UserError(f"model.num_classes: {spec.model.num_classes}, but data.root {spec.data.root!r} has "
                            f"{len(classes)} class folders in its {split} split; set model.num_classes = "
                            f"{len(classes)}")


def load_source(data, split: str, batch_size: int = 128, pin: bool = False) -> Source:
    """One split of the spec's `[data]` table: (inputs, targets) tensors (InMemory), or a Stream of
    batches when the factory gives a Dataset, a DataLoader or an iterable, and for an image folder
    (`batch_size`: a Dataset's loader's)."""
    check(data)
    if data.name == "imagefolder":
        from losslandscape.inputs.imagefolder import ImageFolder

        _check_split(split)
        dataset = ImageFolder(data.root, split, data.image_size, data.transform)
        return stream_of(dataset, f"the image folder {data.root!r} ({split})", batch_size_=batch_size,
                         workers=data.workers, pin=pin, max_samples=data.max_samples, seed=data.seed,
                         parts=data.parts, part=data.part)
    if ":" in data.name:
        result = _factory_result(data.name, split)
        if not _is_pair(result):
            return stream_of(result, f"{data.name}({split!r})", batch_size_=batch_size, workers=data.workers,
                             pin=pin, max_samples=data.max_samples, seed=data.seed, parts=data.parts,
                             part=data.part, input_keys=data.input_keys)
    if data.input_keys:
        raise UserError(f"data.input_keys: the {split} split is (inputs, targets) tensors, not dict batches; "
                        "input_keys names the keys of dict batches: leave it empty")
    return InMemory(*_load(data.name, data.root, split, data.max_samples, data.seed, data.transform, data.parts,
                           data.part))


def load_split(data, split: str) -> InMemory:
    """The inputs and targets of one split of the spec's `[data]` table, as whole tensors (training,
    the Hessian's data): a factory that gives a stream is one line."""
    source = load_source(data, split)
    if source.streamed:
        raise UserError(f"data.name: {data.name}({split!r}) gives a stream of batches; this step needs the "
                        "split as (inputs, targets) tensors")
    return source


def forget_loaded() -> None:
    """Drop the splits loaded so far in this process (the Python interface serves each call's own
    data under a name of its digest, which another call's data may share)."""
    _factory_result.cache_clear()
    _load.cache_clear()


@functools.lru_cache(maxsize=8)
def _factory_result(name: str, split: str):
    """What a user's data factory returns for `split` (called once per process)."""
    return import_factory(name, "data.name")(split)


def _is_pair(result) -> bool:
    """(inputs, targets) as tensors or arrays: the in-memory fast path."""
    return (isinstance(result, tuple) and len(result) == 2
            and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in result))


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise UserError(f"data.splits: {split!r} is not valid; expected train or test")


@functools.lru_cache(maxsize=8)
def _load(name: str, root: str, split: str, max_samples: int, seed: int, transform: str = "standard",
          parts: int = 1, part: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    _check_split(split)
    if name == "cifar10":
        inputs, targets = _cifar10(Path(root), split, transform)
    elif name == "digits":
        inputs, targets = _digits(split)
    elif name == "synthetic":
        inputs, targets = _synthetic(split, max_samples or SYNTHETIC_SIZE, seed)
    elif ":" in name:
        inputs, targets = _factory(name, split)
    else:
        raise UserError(f"data.name: unknown data set {name!r}; choose one of "
                        f"{', '.join(BUILTIN)} or give \"package.module:factory\"")
    keep = kept_indices(len(targets), max_samples, seed, parts, part)
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


def _cifar10(root: Path, split: str, transform: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
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
    y = torch.from_numpy(np.concatenate(labels))
    if transform == "raw":
        return x, y
    mean, std = (CIFAR_MEAN, CIFAR_STD) if transform == "standard" else (ORIGINAL_CIFAR_MEAN, ORIGINAL_CIFAR_STD)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1), y


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: images (1797, 8, 8) of pixels 0..16 and their labels. Read
    from the file scikit-learn ships (digits.csv.gz: 64 pixels and the label a row, what its
    `load_digits` reads) without importing scikit-learn, whose import costs every process of a
    job 1.5 s; through `load_digits` where that file is not where this version keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, target = digits_arrays()
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8), pixels 0..16
    y = torch.from_numpy(target.astype(np.int64))
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
    """A factory's (inputs, targets), dtypes kept as a Dataset's batches keep them (the model
    gets floating inputs in its own dtype: batches.input_dtype); boolean inputs as float32,
    integer targets as int64 (classes, tokens)."""
    inputs, targets = (torch.as_tensor(t) for t in _factory_result(name, split))
    if len(inputs) != len(targets):
        raise UserError(f"data.name: {name}({split!r}) gave {len(inputs)} inputs but {len(targets)} targets")
    if inputs.dtype == torch.bool:
        inputs = inputs.float()
    return inputs, (targets if targets.is_floating_point() else targets.long())


def input_channels(data) -> int:
    """Channels of the data set's inputs, so that a zoo model can be built to fit."""
    check(data)
    if data.name == "digits":
        return 1
    if data.name in ("cifar10", "synthetic", "imagefolder"):
        return 3
    first = load_source(data, data.splits[0]).first_input()
    return int(first.shape[1]) if first is not None and first.dim() > 1 else 1
