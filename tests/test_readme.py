"""The examples of the README and of docs/ run as they are written: their model and data factories."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import BIN, REPO


def pages() -> list:
    """The README and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_blocks() -> dict[str, str]:
    """{file name: code} of the python blocks, in the README or docs/, that open with '# <name>.py'."""
    blocks = {}
    for page in pages():
        for m in re.finditer(r"```python\n# (\w+\.py)\n.*?(?=```)", page.read_text(), re.S):
            assert m.group(1) not in blocks, f"two examples named {m.group(1)}"
            blocks[m.group(1)] = m.group(0).split("\n", 2)[2]
    return blocks


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_readme_factories_make_a_surface(tmp_path):
    blocks = readme_blocks()
    assert {"mynet.py", "mydata.py"} <= set(blocks)
    for name in ("mynet.py", "mydata.py"):
        (tmp_path / name).write_text(blocks[name])
    sys.path.insert(0, str(tmp_path))
    try:
        import mydata
        import mynet
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = mynet.build().eval()
    torch.save(model.state_dict(), tmp_path / "mynet.pt")
    (tmp_path / "job.toml").write_text('''
[model]
name = "mynet:build"
checkpoint = "mynet.pt"
[data]
name = "mydata:load"
splits = ["train", "test"]
[grid]
x = "-1:1:3"
[evaluation]
device = "cpu"
[output]
surface = "s.h5"
''')
    proc = subprocess.run([str(BIN / "losslandscape"), "surface", "job.toml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["train_done"][...].all() and f["test_done"][...].all()
        loss = f["test_loss"][1]  # x = 0: the checkpoint itself
    x, y = mydata.load("test")
    with torch.no_grad():
        want = F.cross_entropy(model(x).double(), y).item()
    assert loss == pytest.approx(want, rel=1e-5)


def readme_toml(first_line: str) -> str:
    """The toml block, in the README or docs/, that starts with `first_line` after [model]."""
    found = [m.group(1) for page in pages()
             for m in re.finditer(r"```toml\n(\[model\]\n" + re.escape(first_line) + r"\n.*?)```", page.read_text(), re.S)]
    assert len(found) == 1, first_line
    return found[0]


def _import(tmp_path, name):
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def _surface(tmp_path, toml: str, *overrides: str):
    (tmp_path / "job.toml").write_text(toml)
    proc = subprocess.run([str(BIN / "losslandscape"), "surface", "job.toml", "--output.surface=s.h5",
                           "--evaluation.threads=1", "--evaluation.device=cpu", *overrides],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_readme_transformer_example_runs_as_written(tmp_path, monkeypatch):
    (tmp_path / "tinylm.py").write_text(readme_blocks()["tinylm.py"])
    text = "The loss landscape of a small language model, byte by byte. " * 12
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "test.txt").write_text(text[::-1])
    _surface(tmp_path, readme_toml('name = "tinylm:build"'), "--grid.x=-1:1:3", "--grid.y=-1:1:3")
    tinylm = _import(tmp_path, "tinylm")
    torch.manual_seed(0)  # the fresh initialisation every run builds (makedirections.FRESH_INIT_SEED)
    model = tinylm.build().eval()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        moved = set(f["directions/x"])
        assert "transformer.wte.weight" not in moved and "transformer.wpe.weight" not in moved
        assert "transformer.h.0.attn.c_attn.weight" in moved
        assert "train_acc" not in f  # the model's own loss has no accuracy
        centre = {s: f[f"{s}_loss"][1, 1] for s in ("train", "test")}
    monkeypatch.chdir(tmp_path)  # the example reads train.txt / test.txt where it runs
    for split in ("train", "test"):
        total, tokens = 0.0, 0
        with torch.no_grad():
            for batch in tinylm.data(split):
                n = batch["labels"][:, 1:].numel()  # GPT-2 scores each position against the next token
                total += model(**batch).loss.double().item() * n
                tokens += n
        assert centre[split] == pytest.approx(total / tokens, rel=1e-5)


def test_the_readme_image_folder_example_runs_as_written(tmp_path):
    from PIL import Image

    (tmp_path / "imagefolder.py").write_text(readme_blocks()["imagefolder.py"])
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 12)):
        for i in range(n):
            folder = tmp_path / "images" / split / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    toml = ('[model]\nname = "resnet20"\n[data]\nname = "imagefolder:data"\nworkers = 2\nsplits = ["train"]\n'
            '[grid]\nx = "-1:1:3"\n')
    _surface(tmp_path, toml, "--evaluation.batch_size=10")
    imagefolder = _import(tmp_path, "imagefolder")
    from losslandscape.inputs.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3).eval()
    items = [imagefolder.Folder(tmp_path / "images" / "train")[i] for i in range(24)]
    x, y = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
    with torch.no_grad():
        want = F.cross_entropy(model(x).double(), y).item()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["train_loss"][1] == pytest.approx(want, rel=1e-5)
