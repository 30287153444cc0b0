"""data.name = "imagefolder", data.transform and data.parts / data.part.

The folder is written here: 270 PNGs of 40 to 70 pixels a side, RGB and grayscale, in 3 class
folders per split (created out of name order, one with a nested folder, an upper-case
extension and a stray text file). The expected inputs are computed here with PIL's resize and
numpy (crop, scaling, normalisation), then given to the tool as tensors through a data
factory: the folder must give the same batches and the same surface.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from losslandscape.inputs import data
from losslandscape.run import work
from losslandscape.run import makedirections
from losslandscape.inputs import userimport
from losslandscape import spec as specs
from losslandscape.run.driver import run_serial
from losslandscape.errors import UserError
from losslandscape.run.work import SurfaceWork, prepare
from losslandscape.spec import Data

CLASSES = ("b_bird", "a_ant", "c_cow")  # created in this order; numbered a=0, b=1, c=2
PER_CLASS = {"train": 60, "val": 30}
SIDE = 32  # data.image_size
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(autouse=True)
def fresh_cache():
    data._load.cache_clear()
    yield
    data._load.cache_clear()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, list[tuple[Path, int]]]]:
    """(root, {split: [(image path, class index)] in the order the split must list them})."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(21)
    order = {}
    for split, n in PER_CLASS.items():
        items = []
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(40, 71, size=2))
                gray = i % 3 == 0
                # a class-dependent brightness, so that the classes differ
                level = 60 + 60 * sorted(CLASSES).index(name)
                pixels = np.clip(rng.normal(level, 50, (h, w) if gray else (h, w, 3)), 0, 255).astype(np.uint8)
                # names in reverse creation order, so listing order and creation order differ
                sub = root / split / name / ("nested" if i % 10 == 1 else "")
                sub.mkdir(exist_ok=True)
                path = sub / f"img{n - i:03d}.{'PNG' if i % 7 == 2 else 'png'}"
                Image.fromarray(pixels, "L" if gray else "RGB").save(path, format="PNG")
                items.append((path, sorted(CLASSES).index(name)))
        (root / split / CLASSES[0] / "notes.txt").write_text("not an image")
        # the listing order: by class name, then by path in a sorted walk (files before sub-folders'
        # files when the names sort so: "img..." < "nested")
        order[split] = sorted(items, key=lambda it: (it[1], it[0].parent.name == "nested", it[0].name))
    return root, order


def expected(path: Path, side: int = SIDE, normalise: bool = True) -> np.ndarray:
    """The tool's input for one image, computed independently: (3, side, side) float32."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    short = round(side * 8 / 7)
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    pixels = np.asarray(img.resize(size, Image.BILINEAR) if size != (w, h) else img)  # (H, W, 3) uint8
    top, left = round((pixels.shape[0] - side) / 2), round((pixels.shape[1] - side) / 2)
    x = pixels[top:top + side, left:left + side].astype(np.float32) / np.float32(255)
    if normalise:
        x = (x - MEAN) / STD
    return x.transpose(2, 0, 1)


def expected_split(order, split: str, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    items = order["val" if split == "test" else "train"]
    x = np.stack([expected(p, normalise=normalise) for p, _ in items])
    return torch.from_numpy(x), torch.tensor([k for _, k in items])


def loaded(d: Data, split: str, batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    source = data.load_source(d, split, batch)
    batches = list(source)
    assert all(len(b.targets) <= batch for b in batches)
    return torch.cat([b.args[0] for b in batches]), torch.cat([b.targets for b in batches])


def folder_data(root, **kw) -> Data:
    return Data(name="imagefolder", root=str(root), image_size=SIDE, **kw)


@pytest.mark.parametrize("transform", ["standard", "original", "raw"])
def test_batches_are_the_images_transformed_independently(folder, transform):
    root, order = folder
    for split in ("train", "test"):
        x, y = loaded(folder_data(root, transform=transform), split)
        want_x, want_y = expected_split(order, split, normalise=transform != "raw")
        assert x.shape == (3 * PER_CLASS["val" if split == "test" else "train"], 3, SIDE, SIDE)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(y, want_y)
        torch.testing.assert_close(x, want_x, rtol=0, atol=1e-6)
    if transform == "raw":
        assert 0 <= float(x.min()) and float(x.max()) <= 1
    else:
        assert float(x.min()) < -1  # normalised


def test_resize_and_crop_by_hand(tmp_path):
    """An image whose shorter side is already round(42 * 8 / 7) = 48 is not resized: the crop is
    its pixels [9:51, 3:45] (top = round(18 / 2), left = round(6 / 2)); one 49 x 97 is resized
    to 48 x int(48 * 97 / 49) = 95."""
    rng = np.random.default_rng(1)
    (tmp_path / "train" / "only").mkdir(parents=True)
    pixels = rng.integers(0, 256, (60, 48, 3), dtype=np.uint8)  # H = 60, W = 48
    Image.fromarray(pixels, "RGB").save(tmp_path / "train" / "only" / "a.png")
    tall = rng.integers(0, 256, (97, 49), dtype=np.uint8)
    Image.fromarray(tall, "L").save(tmp_path / "train" / "only" / "b.bmp")
    x, y = loaded(Data(name="imagefolder", root=str(tmp_path), image_size=42, transform="raw"), "train")
    assert x.shape == (2, 3, 42, 42) and y.tolist() == [0, 0]
    assert torch.equal(x[0], torch.from_numpy(pixels[9:51, 3:45].astype(np.float32) / 255).permute(2, 0, 1))
    resized = np.asarray(Image.fromarray(tall, "L").convert("RGB").resize((48, 95), Image.BILINEAR))
    top = round((95 - 42) / 2)  # 26.5 -> 26 (half to even, as torchvision's CenterCrop)
    assert top == 26
    want = resized[top:top + 42, 3:45].astype(np.float32) / 255
    assert torch.equal(x[1], torch.from_numpy(want).permute(2, 0, 1))


def test_max_samples_and_workers_keep_the_tensor_paths_items(folder):
    root, order = folder
    x_all, y_all = expected_split(order, "train")
    name = "python:imagefolder-test-tensors-subset"
    userimport.register(name, lambda split: (x_all, y_all))
    want_x, want_y = data.load_split(Data(name=name, max_samples=40, seed=3), "train")
    x, y = loaded(folder_data(root, max_samples=40, seed=3, workers=2), "train", batch=16)
    assert len(y) == 40 and torch.equal(y, want_y)
    torch.testing.assert_close(x, want_x, rtol=0, atol=1e-6)


def test_parts_select_contiguous_equal_parts(folder):
    root, order = folder
    x_all, y_all = expected_split(order, "train")  # 180 images
    name = "python:imagefolder-test-tensors-parts"
    userimport.register(name, lambda split: (x_all, y_all))
    m = 180 // 7  # 25 items a part; the last 5 in none
    seen = []
    for part in range(7):
        lo, hi = part * m, (part + 1) * m
        x, y = loaded(folder_data(root, parts=7, part=part), "train")
        assert torch.equal(y, y_all[lo:hi])
        torch.testing.assert_close(x, x_all[lo:hi], rtol=0, atol=1e-6)
        tx, ty = data.load_split(Data(name=name, parts=7, part=part), "train")  # the tensor path
        assert torch.equal(ty, y_all[lo:hi]) and torch.equal(tx, x_all[lo:hi])
        seen += list(range(lo, hi))
    assert seen == list(range(175))
    # after the max_samples subset: part 1 of 2 of the 40 kept items is the last 20 of them
    keep_x, keep_y = data.load_split(Data(name=name, max_samples=40, seed=3), "train")
    x, y = loaded(folder_data(root, max_samples=40, seed=3, parts=2, part=1), "train")
    assert torch.equal(y, keep_y[20:40])
    torch.testing.assert_close(x, keep_x[20:40], rtol=0, atol=1e-6)


def write_cifar(root: Path) -> np.ndarray:
    """A cifar-10-batches-py folder of 4 images per file; returns the test batch's pixels (N, 3072)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        with open(root / name, "wb") as fh:
            pickle.dump({b"labels": [1, 2, 3, 4], b"data": pixels}, fh, protocol=2)
    return pixels


def test_cifar10_transforms(tmp_path):
    pixels = write_cifar(tmp_path / "cifar")
    planes = pixels.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    original_mean = np.array([125.3, 123.0, 113.9]).reshape(1, 3, 1, 1) / 255.0
    original_std = np.array([63.0, 62.1, 66.7]).reshape(1, 3, 1, 1) / 255.0
    standard = (planes - np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)) \
        / np.array([0.2470, 0.2435, 0.2616]).reshape(1, 3, 1, 1)
    want = {"raw": planes, "original": (planes - original_mean) / original_std, "standard": standard}
    got = {}
    for transform, values in want.items():
        x, y = data.load_split(Data(name="cifar10", root=str(tmp_path / "cifar"), transform=transform), "test")
        np.testing.assert_allclose(x.numpy(), values, rtol=0, atol=2e-6, err_msg=transform)
        assert y.tolist() == [1, 2, 3, 4]
        got[transform] = x
    # the original code's constants are not ours: 113.9 / 255 = 0.44667 against 0.4465
    assert float((got["original"] - got["standard"]).abs().max()) > 1e-4


def job(root: Path, out: Path, **data_fields) -> dict:
    return {
        "model": {"name": "resnet20", "num_classes": 3},
        "data": {"name": "imagefolder", "root": str(root), "image_size": SIDE, "splits": ["train", "test"],
                 "max_samples": 24, **data_fields},
        "grid": {"x": "-1:1:3"},
        "evaluation": {"device": "cpu", "batch_size": 16, "threads": 1},
        "output": {"surface": str(out)},
    }


def values(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        assert f["train_done"][...].all() and f["test_done"][...].all()
        return {k: f[k][...] for k in VALUES}


@pytest.fixture(scope="module")
def folder_surface(folder, tmp_path_factory) -> Path:
    root, _ = folder
    out = tmp_path_factory.mktemp("surf") / "folder.h5"
    assert run_serial(SurfaceWork(specs.from_dict(job(root, out)))) == 0
    return out


@pytest.mark.slow  # two surfaces, about 4 s
def test_surface_on_the_folder_equals_the_surface_on_its_tensors(folder, folder_surface, tmp_path):
    root, order = folder
    splits = {s: expected_split(order, s) for s in ("train", "test")}
    name = "python:imagefolder-test-tensors-surface"
    userimport.register(name, lambda split: splits[split])
    spec = job(root, tmp_path / "tensors.h5", name=name)
    del spec["data"]["root"], spec["data"]["image_size"]
    assert run_serial(SurfaceWork(specs.from_dict(spec))) == 0
    got, want = values(folder_surface), values(tmp_path / "tensors.h5")
    for k in VALUES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=0, err_msg=k)
    assert np.isfinite(got["train_loss"]).all() and got["train_loss"].std() > 0


def test_identity_records_the_new_fields_only_when_set(folder, tmp_path):
    root, _ = folder
    plain = specs.from_dict({"data": {"name": "digits"}})
    ident = makedirections.identity(plain, "sha", "")
    assert not {"data.transform", "data.parts", "data.part", "data.image_size"} & set(ident)
    # a file made for the folder (nothing evaluated) resumes with its own spec, and refuses another
    # transform, part or crop size
    out = tmp_path / "s.h5"
    prepare(specs.from_dict(job(root, out)))
    assert isinstance(work.plan(specs.from_dict(job(root, out))), work.Resume)
    for fields, key in (({"transform": "raw"}, "data.transform"), ({"parts": 2, "part": 1}, "data.part"),
                        ({"image_size": 28}, "data.image_size")):
        other = job(root, out, **fields)
        with pytest.raises(UserError, match=f"^{re.escape(key)}: the surface file"):
            work.plan(specs.from_dict(other))


def test_refusals(folder, tmp_path):
    root, _ = folder
    cases = [
        (folder_data(tmp_path / "missing"), "train", r"^data\.root: no such folder"),
        (folder_data(root / "train"), "train", r"^data\.root: .* has no train folder"),
        (folder_data(root / "train"), "test", r"^data\.root: .* has no val or test folder"),
        (folder_data(root, parts=3, part=3), "train", r"^data\.part: 3 is not valid; expected 0 to 2"),
        (folder_data(root, parts=0), "train", r"^data\.parts: 0 is not valid"),
        (folder_data(root, parts=181), "train", r"^data\.parts: 181 parts of 180 items"),
        (Data(name="digits", transform="raw"), "train", r"^data\.transform: 'raw' applies to the cifar10 and "
                                                         r"imagefolder data sets only, not to 'digits'"),
        (Data(name="synthetic", transform="original"), "train", r"^data\.transform:"),
    ]
    (tmp_path / "empty" / "train").mkdir(parents=True)
    cases.append((folder_data(tmp_path / "empty"), "train", r"^data\.root: .* has no class folders"))
    (tmp_path / "noimg" / "train" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "cls" / "a.txt").write_text("x")
    cases.append((folder_data(tmp_path / "noimg"), "train", r"^data\.root: the class folder .* has no images"))
    for d, split, message in cases:
        with pytest.raises(UserError, match=message) as err:
            data.load_source(d, split)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^data\.transform:"):
        data.input_channels(Data(name="digits", transform="raw"))
    # a zoo model with another number of classes than the folder has
    spec = specs.from_dict(job(root, tmp_path / "x.h5"))
    data.check_classes(spec)
    spec.model.num_classes = 10
    with pytest.raises(UserError, match=r"^model\.num_classes: 10, but data\.root .* has 3 class folders"):
        data.check_classes(spec)


def test_refused_before_a_file_is_made(tmp_path):
    out = tmp_path / "s.h5"
    spec = specs.from_dict({"data": {"name": "digits", "transform": "raw"}, "grid": {"x": "-1:1:3"},
                            "evaluation": {"device": "cpu"}, "output": {"surface": str(out)}})
    with pytest.raises(UserError, match=r"^data\.transform:"):
        run_serial(SurfaceWork(spec))
    assert not out.exists()


def test_a_zoo_model_with_other_classes_than_the_folder_is_refused_by_the_job(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "s.h5"
    spec = job(root, out)
    spec["model"]["num_classes"] = 10
    with pytest.raises(UserError, match=r"^model\.num_classes: 10, but data\.root .* has 3 class folders .*"
                                        r"set model\.num_classes = 3$"):
        run_serial(SurfaceWork(specs.from_dict(spec)))
    assert not out.exists()


def test_an_image_folders_original_transform_is_its_standard_one(folder, tmp_path):
    root, _ = folder
    same = [makedirections.identity(specs.from_dict(job(root, tmp_path / "s.h5", transform=t)), "sha", "")
            for t in ("standard", "original")]
    assert same[0] == same[1]


def test_the_default_image_size_is_224(tmp_path):
    """README: images are "centre-cropped to `data.image_size` (224)", the shorter side first resized
    to round(224 x 8 / 7) = 256: torchvision's Resize(256), CenterCrop(224). With no image_size in
    the spec, two images larger than that (one RGB, one grayscale) give (3, 224, 224) inputs equal
    to the resize and crop computed here with PIL."""
    rng = np.random.default_rng(3)
    (tmp_path / "train" / "only").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8), "RGB").save(tmp_path / "train" / "only" / "a.png")
    Image.fromarray(rng.integers(0, 256, (400, 250), dtype=np.uint8), "L").save(tmp_path / "train" / "only" / "b.png")
    spec = specs.from_dict({"data": {"name": "imagefolder", "root": str(tmp_path), "splits": ["train"]}})
    assert spec.data.image_size == 224
    x, y = loaded(spec.data, "train")
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 0]
    want = np.stack([expected(tmp_path / "train" / "only" / name, side=224) for name in ("a.png", "b.png")])
    torch.testing.assert_close(x, torch.from_numpy(want), rtol=0, atol=1e-6)
