"""Data sets: CIFAR-10 python batches (written here, tiny), digits, user factories, seeded subsets."""

import os
import pickle
import textwrap

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from losslandscape.inputs import data
from losslandscape.errors import UserError
from losslandscape.spec import Data

N_PER_BATCH = 10
# the per-channel statistics of the CIFAR-10 training set, as every CIFAR ResNet normalises
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def fresh_cache():
    data._load.cache_clear()
    yield
    data._load.cache_clear()


def write_cifar(root, protocol=pickle.DEFAULT_PROTOCOL, seed=0):
    """A cifar-10-batches-py folder of N_PER_BATCH images per file; returns {file name: (pixels, labels)}."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, size=(N_PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=N_PER_BATCH)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": pixels,
                 b"filenames": [f"img{i}.png".encode() for i in range(N_PER_BATCH)]}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        written[name] = (pixels, labels)
    return written


def normalised(pixels: np.ndarray) -> np.ndarray:
    """(N, 3072) uint8, channel-major rows as in the CIFAR files -> (N, 3, 32, 32), each value by hand."""
    out = np.empty((len(pixels), 3, 32, 32), dtype=np.float64)
    for c in range(3):
        plane = pixels[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32).astype(np.float64)
        out[:, c] = (plane / 255.0 - MEAN[c]) / STD[c]
    return out


def cifar(root, **kwargs):
    return Data(name="cifar10", root=str(root), **kwargs)


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar10_shapes_labels_and_normalisation(tmp_path, protocol):
    root = tmp_path / "cifar-10-batches-py"
    written = write_cifar(root, protocol)
    x, y = data.load_split(cifar(root), "train")
    assert x.shape == (5 * N_PER_BATCH, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    assert y.tolist() == sum((written[n][1] for n in train_files), [])
    expected = normalised(np.concatenate([written[n][0] for n in train_files]))
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)

    x, y = data.load_split(cifar(root), "test")
    assert x.shape == (N_PER_BATCH, 3, 32, 32)
    assert y.tolist() == written["test_batch"][1]
    np.testing.assert_allclose(x.numpy(), normalised(written["test_batch"][0]), rtol=0, atol=1e-5)
    assert data.input_channels(cifar(root)) == 3


def test_cifar10_pixel_layout_is_channel_then_row_then_column(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root)
    pixels = np.zeros((1, 3072), dtype=np.uint8)
    pixels[0, 1024 + 32 * 5 + 7] = 255  # green channel, row 5, column 7
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": pixels, b"labels": [3]}, fh)
    x, y = data.load_split(cifar(root), "test")
    assert y.tolist() == [3]
    assert x[0, 1, 5, 7] == pytest.approx((1 - MEAN[1]) / STD[1], abs=1e-5)
    assert x[0, 1, 5, 8] == pytest.approx((0 - MEAN[1]) / STD[1], abs=1e-5)
    assert x[0, 0, 5, 7] == pytest.approx((0 - MEAN[0]) / STD[0], abs=1e-5)


class _Payload:
    """Pickles as a call of os.mkdir: what a malicious 'batch' would run on unpickling."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


@pytest.mark.parametrize("obj", ["payload", "os_class"])
def test_cifar10_refuses_pickles_of_anything_but_arrays(tmp_path, obj):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root)
    marker = tmp_path / "pwned"
    bad = _Payload(marker) if obj == "payload" else os.stat_result
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": bad, b"labels": [0]}, fh)
    with pytest.raises(UserError) as info:
        data.load_split(cifar(root), "test")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.root:") and "test_batch" in message
    assert not marker.exists()  # refused before anything ran


def test_cifar10_missing_folder_and_missing_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        data.load_split(cifar(missing), "train")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.root:") and str(missing) in message

    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(UserError) as info:
        data.load_split(cifar(root), "train")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.root:") and "data_batch_3" in message
    data.load_split(cifar(root), "test")  # the test split does not need that file


@pytest.mark.parametrize("content", [b"not a pickle at all", "pickle_without_data"])
def test_cifar10_files_of_another_kind(tmp_path, content):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root)
    if content == "pickle_without_data":
        content = pickle.dumps({b"labels": [1, 2]})
    (root / "test_batch").write_bytes(content)
    with pytest.raises(UserError) as info:
        data.load_split(cifar(root), "test")
    assert "\n" not in str(info.value) and "test_batch" in str(info.value)


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(r.tobytes() for r in x.reshape(len(x), -1).numpy())


def test_digits_split_is_a_fixed_partition_of_all_1797_images():
    d = Data(name="digits")
    x_train, y_train = data.load_split(d, "train")
    x_test, y_test = data.load_split(d, "test")
    assert x_train.shape[1:] == (1, 8, 8) and x_test.shape[1:] == (1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert len(y_train) + len(y_test) == 1797
    assert 0.1 * 1797 < len(y_test) < 0.4 * 1797
    assert data.input_channels(d) == 1

    # undo the scaling to 0..16 and compare (image, label) pairs with scikit-learn's own copy
    bunch = load_digits()
    full = np.concatenate([bunch.images.reshape(1797, 64), bunch.target[:, None]], axis=1).astype(np.int64)
    ours = np.concatenate([
        torch.cat([x_train, x_test]).reshape(-1, 64).numpy() * 8.0 + 8.0,
        torch.cat([y_train, y_test]).numpy()[:, None]], axis=1)
    np.testing.assert_allclose(ours, np.round(ours), atol=1e-5)  # pixels really were integers 0..16
    assert sorted(map(tuple, np.round(ours).astype(np.int64))) == sorted(map(tuple, full))

    # the same split on a second reading
    data._load.cache_clear()
    x2, y2 = data.load_split(d, "train")
    assert torch.equal(x2, x_train) and torch.equal(y2, y_train)
    # every class is in both splits
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())


def test_digits_train_and_test_share_no_sample():
    bunch = load_digits()
    flat = bunch.images.reshape(1797, 64)
    # images that occur more than once in the data set could sit on both sides legitimately
    _, counts = np.unique(flat, axis=0, return_counts=True)
    unique_rows = {r.tobytes() for r, c in zip(np.unique(flat, axis=0), counts) if c == 1}
    d = Data(name="digits")
    pix = {s: {r.tobytes() for r in (data.load_split(d, s)[0].reshape(-1, 64).numpy() * 8 + 8).round()
               .astype(flat.dtype)} for s in ("train", "test")}
    assert not (pix["train"] & pix["test"] & unique_rows)
    assert len(pix["train"] | pix["test"]) == len(np.unique(flat, axis=0))


def test_max_samples_is_a_fixed_seeded_subset():
    full_x, full_y = data.load_split(Data(name="digits"), "train")
    full = {r: y for r, y in zip((r.tobytes() for r in full_x.reshape(len(full_x), -1).numpy()),
                                 full_y.tolist())}

    a_x, a_y = data.load_split(Data(name="digits", max_samples=100, seed=0), "train")
    data._load.cache_clear()
    b_x, b_y = data.load_split(Data(name="digits", max_samples=100, seed=0), "train")
    c_x, c_y = data.load_split(Data(name="digits", max_samples=100, seed=1), "train")
    assert a_x.shape == (100, 1, 8, 8) and a_y.shape == (100,)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_x, c_x)
    for x, y in ((a_x, a_y), (c_x, c_y)):
        for row, label in zip((r.tobytes() for r in x.reshape(len(x), -1).numpy()), y.tolist()):
            assert full[row] == label

    # more samples than the split holds: the whole split
    all_x, _ = data.load_split(Data(name="digits", max_samples=100_000), "train")
    assert torch.equal(all_x, full_x)


def test_max_samples_applies_to_cifar10(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root)
    full_x, _ = data.load_split(cifar(root), "train")
    x, _ = data.load_split(cifar(root, max_samples=7, seed=5), "train")
    assert x.shape == (7, 3, 32, 32)
    assert set(_rows(x)) <= set(_rows(full_x))


FACTORY = """
import torch

CALLS = []

def make(split):
    CALLS.append(split)
    n = 12 if split == "train" else 5
    x = torch.arange(n * 2 * 4 * 4, dtype=torch.float64).reshape(n, 2, 4, 4)
    y = [i % 3 for i in range(n)]
    return x, torch.tensor(y, dtype=torch.int32)

def ragged(split):
    return torch.zeros(4, 1, 8, 8), torch.zeros(3)

def single(split):
    return torch.zeros(4, 1, 8, 8)
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = f"userdata_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factory_is_called_with_the_split_name(factory_module):
    import importlib

    d = Data(name=f"{factory_module}:make", splits=["test"])
    x, y = data.load_split(d, "train")
    assert x.shape == (12, 2, 4, 4) and x.dtype == torch.float64  # kept: the model gets its own (test_data_dtypes.py)
    assert y.tolist() == [i % 3 for i in range(12)] and y.dtype == torch.int64
    assert data.load_split(d, "test")[0].shape == (5, 2, 4, 4)
    assert importlib.import_module(factory_module).CALLS == ["train", "test"]
    assert data.input_channels(d) == 2


@pytest.mark.parametrize("attr, words", [
    ("ragged", ["4 inputs", "3 targets"]),
    ("single", ["(inputs, targets)"]),
    ("missing", ["has no", "missing"]),
])
def test_user_factory_mistakes(factory_module, attr, words):
    with pytest.raises(UserError) as info:
        data.load_split(Data(name=f"{factory_module}:{attr}"), "train")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.name:")
    for word in words:
        assert word in message


def test_unknown_data_set_and_module():
    with pytest.raises(UserError) as info:
        data.load_split(Data(name="mnist"), "train")
    assert "mnist" in str(info.value) and "cifar10" in str(info.value) and "digits" in str(info.value)
    with pytest.raises(UserError) as info:
        data.load_split(Data(name="no_such_module_xyz:make"), "train")
    assert "no_such_module_xyz" in str(info.value)


def test_synthetic_is_cifar_shaped_and_seeded():
    x, y = data.load_split(Data(name="synthetic", max_samples=8, seed=1), "train")
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    assert int(y.min()) >= 0 and int(y.max()) < 10
    data._load.cache_clear()
    assert torch.equal(data.load_split(Data(name="synthetic", max_samples=8, seed=1), "train")[0], x)
    assert not torch.equal(data.load_split(Data(name="synthetic", max_samples=8, seed=1), "test")[0], x)
