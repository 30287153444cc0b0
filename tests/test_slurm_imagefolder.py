"""The README's image-folder example under real SLURM array tasks (tests/slurmcluster.py).

README: with `[data] name = "imagefolder:data"`, `workers = 2` and a zoo model, "the surface is
computed like any other, under `mpirun` and in SLURM array tasks too". The example's
`imagefolder.py` is taken from the documentation as written; `submit` shares the points out to
2 array tasks, each streaming the folder with 2 loader processes; the merged file's values are
checked against plain forward passes of the moved model over the images, computed here.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs.models import build_model

from helpers import REPO

pytestmark = pytest.mark.slow  # a real SLURM cluster


def documented_example(name: str) -> str:
    """The code block that opens with `# <name>` in README.md or in a page under docs/."""
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        m = re.search(rf"```python\n# {re.escape(name)}\n(.*?)```", page.read_text(), re.S)
        if m:
            return m.group(1)
    pytest.fail(f"no example {name} in README.md or docs/")


def test_the_image_folder_example_in_slurm_array_tasks(slurm, tmp_path):
    from PIL import Image

    (tmp_path / "imagefolder.py").write_text(documented_example("imagefolder.py"))
    rng = np.random.default_rng(4)
    for i in range(30):
        folder = tmp_path / "images" / "train" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        level = 60 + 60 * (i % 3)  # the classes differ in brightness
        pixels = np.clip(rng.normal(level, 50, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"state_dict": build_model("resnet20", in_channels=3).state_dict()}, tmp_path / "model.pt")
    (tmp_path / "job.toml").write_text('''
[model]
name = "resnet20"
checkpoint = "model.pt"
[data]
name = "imagefolder:data"
workers = 2
splits = ["train"]
[grid]
x = "-1:1:5"
[evaluation]
device = "cpu"
threads = 1
unit_size = 1
batch_size = 8
[output]
surface = "s.h5"
''')
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", "job.toml", "--tasks", "2"],
                          capture_output=True, text=True, env={**slurm.env, "PYTHONPATH": ""}, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr + slurm.logs()
    m = re.search(r"array job (\d+) \((\d+) tasks\), merge job (\d+)", proc.stdout)
    assert m and m.group(2) == "2", proc.stdout + proc.stderr
    array, merge_job = m.group(1), m.group(3)
    slurm.wait([array, merge_job], timeout=300)
    shards = tmp_path / "s.h5.shards"
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(shards.glob("*.log")))
    assert [r["JobState"] for r in slurm.jobs(array)] == ["COMPLETED"] * 2, logs
    assert slurm.state(merge_job) == "COMPLETED", logs

    spec = importlib.util.spec_from_file_location("imagefolder_example", tmp_path / "imagefolder.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    folder = example.Folder(tmp_path / "images" / "train")
    items = [folder[i] for i in range(len(folder))]
    x, y = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
    base = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["train_done"][...].all()
        xs, loss, acc = f["xcoordinates"][...], f["train_loss"][...], f["train_acc"][...]
        d = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
    model = build_model("resnet20", in_channels=3)
    for i, a in enumerate(xs):
        model.load_state_dict({k: v + float(a) * d[k] if k in d else v for k, v in base.items()})
        with torch.no_grad():
            out = model.eval()(x).double()
        assert loss[i] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5), a
        assert acc[i] == pytest.approx(100.0 * (out.argmax(1) == y).double().mean().item(), abs=1e-9), a
    assert len(set(np.round(loss, 6))) == len(xs)  # a real landscape: every point differs
