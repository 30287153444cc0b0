"""An error raised while the loader builds a batch (a Dataset of PIL images and no transform, a
Dataset whose item raises, in the process or in a loader worker) is one line naming the data and
what was expected: exit 1 from the command line, a UserError from Python; no file is left."""

from __future__ import annotations

import sys

import pytest

from helpers import assert_one_line_error, losslandscape

PICTURES = '''
import numpy as np
import torch
from PIL import Image


class Pictures(torch.utils.data.Dataset):
    """8x8 RGB images as PIL gives them, no transform."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)), i % 2


class Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.zeros(192)}["image"], 0  # BROKEN


def pictures(split):
    return Pictures()


def broken(split):
    return Broken()


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
'''
BROKEN_LINE = next(i for i, line in enumerate(PICTURES.splitlines(), 1) if "# BROKEN" in line)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    d = tmp_path / "work"
    d.mkdir()
    (d / "pics.py").write_text(PICTURES)
    monkeypatch.syspath_prepend(str(d))
    yield d
    sys.modules.pop("pics", None)


def run(folder, out, data, *more):
    return losslandscape("surface", "--model.name=pics:build", f"--data.name=pics:{data}", "--data.splits=train",
                         "--grid.x=-1:1:3", f"--output.surface={out}", "--evaluation.device=cpu",
                         "--evaluation.threads=1", *more, cwd=folder)


@pytest.mark.parametrize("workers", [0, 1])
def test_pil_images_without_a_transform_are_one_line_from_the_command_line(folder, tmp_path, workers):
    out = tmp_path / "out" / "s.h5"
    result = run(folder, out, "pictures", f"--data.workers={workers}")
    assert_one_line_error(result, "data.name: pics:pictures('train')", "cannot make a batch of",
                          "found <class 'PIL.Image.Image'>", "expected tensors, numpy arrays or numbers",
                          "torchvision.transforms.ToTensor()")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_item_that_raises_is_one_line_naming_the_data_and_the_users_line(folder, tmp_path, workers):
    """In the process and in a loader worker (whose traceback torch hands over as text)."""
    out = tmp_path / "out" / "s.h5"
    result = run(folder, out, "broken", f"--data.workers={workers}")
    assert_one_line_error(result, "data.name: reading pics:broken('train') failed: KeyError: 'image'",
                          f"at pics.py:{BROKEN_LINE}")
    assert not (tmp_path / "out").exists()


def test_pil_images_without_a_transform_are_a_user_error_in_python(folder, tmp_path):
    import losslandscape as ll
    import pics
    from losslandscape.errors import UserError

    out = tmp_path / "out" / "s.h5"
    with pytest.raises(UserError) as err:
        ll.compute_surface(pics.build(), train=pics.Pictures(), x="-1:1:3", out=out, threads=1)
    line = str(err.value)
    assert "\n" not in line and "train" in line and "PIL.Image.Image" in line, line
    assert "expected tensors, numpy arrays or numbers" in line and "ToTensor()" in line, line
    assert not out.exists() and not list(tmp_path.rglob("*.pt")), list(tmp_path.rglob("*"))


def test_the_loaders_worker_ends_with_the_error_not_when_the_error_is_collected(folder, tmp_path):
    """A notebook keeps its last error: the error must not keep the loader's worker process alive."""
    import multiprocessing

    import torch

    import losslandscape as ll
    import pics
    from losslandscape.errors import UserError

    loader = torch.utils.data.DataLoader(pics.Pictures(), batch_size=4, num_workers=1)
    with pytest.raises(UserError, match="PIL.Image.Image") as err:
        ll.compute_surface(pics.build(), train=loader, x="-1:1:3", out=tmp_path / "s.h5", threads=1)
    assert str(err.value).startswith("train: the DataLoader gives items the loader cannot make a batch of")
    assert multiprocessing.active_children() == []
