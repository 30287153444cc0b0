"""Streamed data end to end: an image folder given as a Dataset, a DataLoader or tensors.

torchvision does not import beside our CPU torch, so the images are a folder of our own: 200
PNGs (3x16x16) in 4 class folders, decoded with PIL by a Dataset written into a module next
to the test's files, as a user would write one. The model is the zoo's resnet20 at its fixed
fresh initialisation; the grid 3x3 with units of 4 points.

Each __getitem__ appends its index to the file named by $STREAM_READS (a file, so the reads of
DataLoader worker processes and of subprocesses are counted too) and sleeps $STREAM_DELAY
seconds (so that a signal lands in the middle of a unit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape import spec as specs
from losslandscape.inputs.batches import subset_indices
from losslandscape.run.driver import run_serial
from losslandscape.surfacefile.format import shard_dir
from losslandscape.numerics.grid import assign_tasks
from losslandscape.run.work import SurfaceWork, prepare
from losslandscape.inputs.models import build_model

from helpers import losslandscape, mpirun

IMAGES, CLASSES, SIDE = 200, 4, 16
TEST_EVERY = 4  # the "test" split: every 4th image
VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")
MODULE = "streamimgs"
CHECKPOINT: dict[str, Path] = {}  # the seeded resnet20 every job starts from, saved by the `images` fixture

FACTORY = '''
"""An image folder as users have one: a map-style Dataset of PNG files, one folder per class."""
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

ROOT = Path(__file__).parent / "images"


class ImageFolder(Dataset):
    def __init__(self, split):
        classes = sorted(d.name for d in ROOT.iterdir() if d.is_dir())
        items = [(p, k) for k, c in enumerate(classes) for p in sorted((ROOT / c).glob("*.png"))]
        self.items = items[::TEST_EVERY] if split == "test" else items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        reads = os.environ.get("STREAM_READS")
        if reads:
            with open(reads, "a") as fh:
                fh.write(f"{i}\\n")
        time.sleep(float(os.environ.get("STREAM_DELAY", "0")))
        path, label = self.items[i]
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0, label  # (3, H, W)


def dataset(split):
    return ImageFolder(split)


def loader(split):
    return DataLoader(ImageFolder(split), batch_size=48, shuffle=False, num_workers=2)


class Examples(IterableDataset):
    """The same images as an IterableDataset: examples one by one, in order."""

    def __init__(self, split):
        self.folder = ImageFolder(split)

    def __iter__(self):
        return (self.folder[i] for i in range(len(self.folder)))


def iterable(split):
    return Examples(split)


OPENED = False


def _open(worker_id):
    global OPENED  # in the worker process
    OPENED = True


class NeedsOpening(ImageFolder):
    """A data set whose loader workers must be started by its worker_init_fn (opening files, say)."""

    def __getitem__(self, i):
        if get_worker_info() is not None and not OPENED:
            raise RuntimeError("read in a worker that its worker_init_fn did not start")
        return super().__getitem__(i)


def opened_loader(split):
    return DataLoader(NeedsOpening(split), batch_size=48, num_workers=2, worker_init_fn=_open)


def tensors(split):
    items = [ImageFolder(split)[i] for i in range(len(ImageFolder(split)))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
'''.replace("TEST_EVERY", str(TEST_EVERY))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The folder of the factory module `streamimgs` and its images; on sys.path for the module."""
    from PIL import Image

    root = tmp_path_factory.mktemp("streamimgs")
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        (root / "images" / f"class{k}").mkdir(parents=True)
    for i in range(IMAGES):
        k = i % CLASSES
        # a class-dependent mean colour, so the classes are not all alike
        pixels = np.clip(rng.normal(64 * k + 32, 40, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "images" / f"class{k}" / f"{i:04d}.png")
    (root / f"{MODULE}.py").write_text(FACTORY)
    torch.manual_seed(0)  # the model every job here starts from: its weights pinned by a checkpoint
    torch.save({"state_dict": build_model("resnet20", in_channels=3).state_dict()}, root / "model.pt")
    CHECKPOINT["path"] = root / "model.pt"
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)


def job(out: Path, factory: str = "dataset", x: str = "-1:1:3", y: str = "-1:1:3", **data) -> dict:
    return {
        "model": {"name": "resnet20", "checkpoint": str(CHECKPOINT["path"])},
        "data": {"name": f"{MODULE}:{factory}", "splits": ["train", "test"], **data},
        "grid": {"x": x, "y": y},
        "evaluation": {"device": "cpu", "unit_size": 4, "batch_size": 64, "threads": 1},
        "output": {"surface": str(out)},
    }


def surface_of(job_: dict) -> dict[str, np.ndarray]:
    """Computed in this process (run_serial); the file's values."""
    assert run_serial(SurfaceWork(specs.from_dict(job_))) == 0
    return read(Path(job_["output"]["surface"]))


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        out = {k: f[k][...] for k in VALUES}
        out["done"] = (f["train_done"][...] & f["test_done"][...]).astype(bool)
    return out


def assert_same(got: dict, want: dict, rtol: float = 1e-5) -> None:
    assert got["done"].all()
    for k in VALUES:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=0, err_msg=k)


def write_toml(path: Path, job_: dict) -> Path:
    lines = []
    for table, values in job_.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
    path.write_text("\n".join(lines).replace("True", "true").replace("False", "false") + "\n")
    return path


def env(**extra: str) -> dict[str, str]:
    """This process's environment without Open MPI's own variables (an in-process MPI singleton
    would make a child mpirun believe it runs inside that job), plus `extra`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    return {**out, "OMP_NUM_THREADS": "1", **extra}


def surface_cmd(toml: Path) -> list[str]:
    return [sys.executable, "-m", "losslandscape", "surface", str(toml)]


def reads(path: Path) -> Counter:
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> dict[str, np.ndarray]:
    """The surface from in-memory (inputs, targets) tensors: the fast path, unchanged by streaming."""
    path = tmp_path_factory.mktemp("ref") / "tensors.h5"
    return {**surface_of(job(path, "tensors")), "path": str(path)}


def pixels(images: Path) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """Every image of the folder read here with PIL, in the order a user's ImageFolder lists them
    (classes sorted, files sorted): (paths, inputs (N, 3, SIDE, SIDE) in [-1, 1], labels)."""
    from PIL import Image

    classes = sorted(d.name for d in (images / "images").iterdir())
    paths = [(p, k) for k, c in enumerate(classes) for p in sorted((images / "images" / c).glob("*.png"))]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
                     for p, _ in paths]) / 127.5 - 1.0
    return [p for p, _ in paths], x, torch.tensor([k for _, k in paths])


def plain_values(surface: Path, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at every grid point of `surface`: one plain forward pass of the
    checkpoint's resnet20, moved by the directions the file holds, over all of (x, y) at once."""
    base = torch.load(CHECKPOINT["path"], weights_only=True)["state_dict"]
    with h5py.File(surface, "r", locking=False) as f:
        one_d = "ycoordinates" not in f
        xs = f["xcoordinates"][...]
        ys = np.zeros(1) if one_d else f["ycoordinates"][...]
        dx = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
        dy = ({k: torch.from_numpy(f["directions/y"][k][...]) for k in f["directions/y"]}
              if "y" in f["directions"] else {k: torch.zeros_like(v) for k, v in dx.items()})
    loss, acc = np.zeros((len(ys), len(xs))), np.zeros((len(ys), len(xs)))
    model = build_model("resnet20", in_channels=3)
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            model.load_state_dict({k: v + a * dx[k] + b * dy[k] if k in dx else v for k, v in base.items()})
            with torch.no_grad():
                out = model.eval()(x).double()
            loss[j, i] = F.cross_entropy(out, y).item()
            acc[j, i] = 100.0 * (out.argmax(1) == y).double().mean().item()
    return (loss[0], acc[0]) if one_d else (loss, acc)


def test_the_reference_equals_plain_forward_passes_of_the_moved_model(images, reference):
    """The reference the streamed surfaces are compared with (in-memory tensors) against plain
    forward passes of the moved model over the images read here: so every "equals the tensor
    path" below is also "equals the plain forward pass"."""
    _, x, y = pixels(images)
    for split, (xs, ys) in (("train", (x, y)), ("test", (x[::TEST_EVERY], y[::TEST_EVERY]))):
        loss, acc = plain_values(Path(reference["path"]), xs, ys)
        np.testing.assert_allclose(reference[f"{split}_loss"], loss, rtol=1e-5, atol=0, err_msg=split)
        np.testing.assert_allclose(reference[f"{split}_acc"], acc, rtol=0, atol=1e-9, err_msg=split)


def test_a_streamed_dataset_equals_plain_forward_passes_of_the_moved_model(images, tmp_path):
    """A map-style Dataset streamed in batches (no tensor path involved) against plain passes."""
    surface = tmp_path / "dataset.h5"
    got = surface_of(job(surface, "dataset", x="-1:1:3", y="-1:1:2"))
    _, x, y = pixels(images)
    for split, (xs, ys) in (("train", (x, y)), ("test", (x[::TEST_EVERY], y[::TEST_EVERY]))):
        loss, acc = plain_values(surface, xs, ys)
        np.testing.assert_allclose(got[f"{split}_loss"], loss, rtol=1e-5, atol=0, err_msg=split)
        np.testing.assert_allclose(got[f"{split}_acc"], acc, rtol=0, atol=1e-9, err_msg=split)


# --- 1. one surface, whatever form the data comes in ------------------------------------------

@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_dataset_dataloader_and_tensors_give_one_surface(images, reference, tmp_path):
    assert reference["done"].all() and np.isfinite(reference["train_loss"]).all()
    assert_same(surface_of(job(tmp_path / "dataset.h5", "dataset")), reference)
    assert_same(surface_of(job(tmp_path / "loader.h5", "loader")), reference)  # 2 worker processes


def test_an_iterable_dataset_is_batched_like_a_dataset(images, reference, tmp_path):
    assert_same(surface_of(job(tmp_path / "iterable.h5", "iterable")), reference)


def test_max_samples_keeps_the_settings_of_a_given_dataloader(images, tmp_path):
    """Its subset is read by a loader rebuilt with the given one's worker_init_fn, batch size, workers."""
    one_d = {"x": "-1:1:3", "y": "", "max_samples": 60}
    want = surface_of(job(tmp_path / "tensors.h5", "tensors", **one_d))
    got = surface_of(job(tmp_path / "loader.h5", "opened_loader", **one_d))
    assert_same(got, want)


# --- 5. max_samples reads only the chosen items ----------------------------------------------

def test_max_samples_reads_only_the_chosen_items(images, tmp_path, monkeypatch):
    """README: `data.max_samples` "keeps a fixed, seeded subset and reads only those items". The
    reads of the user's Dataset are counted (its __getitem__ logs each index): 30 distinct items,
    each read as often as any other, nothing else; the same 30 in a second run (fixed); and the
    file's values are those of plain forward passes over exactly the items read, so the items read
    are the ones evaluated."""
    log = tmp_path / "reads.txt"
    monkeypatch.setenv("STREAM_READS", str(log))
    job_ = job(tmp_path / "s.h5", "dataset", x="-1:1:3", y="", max_samples=30)
    job_["data"]["splits"] = ["train"]
    got = surface_of(job_)
    counted = reads(log)
    assert len(counted) == 30 and all(0 <= i < IMAGES for i in counted), counted
    # one unit of 3 points reads every item once; start-up reads the first batch of 64 (all 30) twice
    # and one batch of 128 (all 30) once for the input channels: 4 reads each, as for all 200 items
    # in test_a_unit_reads_each_item_once_for_all_its_points
    assert set(counted.values()) == {4}, counted
    assert set(counted) == set(subset_indices(IMAGES, 30, 0))  # and they are the subset the tool names
    _, x, y = pixels(images)
    chosen = sorted(counted)
    loss, acc = plain_values(tmp_path / "s.h5", x[chosen], y[chosen])
    np.testing.assert_allclose(got["train_loss"], loss, rtol=1e-5, atol=0)
    np.testing.assert_allclose(got["train_acc"], acc, rtol=0, atol=1e-9)
    others = [i for i in range(IMAGES) if i not in counted][:30]  # any other 30 give other values
    assert not np.allclose(plain_values(tmp_path / "s.h5", x[others], y[others])[0], loss, rtol=1e-3)
    log.unlink()
    job_["output"]["surface"] = str(tmp_path / "again.h5")
    surface_of(job_)
    assert reads(log) == counted  # fixed: the same items again


# --- 6. a unit reads the data once, not once per point ---------------------------------------

def test_a_unit_reads_each_item_once_for_all_its_points(images, tmp_path, monkeypatch):
    log = tmp_path / "reads.txt"
    monkeypatch.setenv("STREAM_READS", str(log))
    job_ = job(tmp_path / "s.h5", "dataset", x="-1:1:8", y="", workers=0)  # 8 points: 2 units of 4
    job_["data"]["splits"] = ["train"]
    surface_of(job_)
    # Start-up reads first batches only: data.input_channels reads one batch of its own loader
    # (batch 128, not the spec's 64) when makedirections.base_model builds the model in `load`
    # (items 0..127, once: `make` takes that model, one process on the CPU); the first batch is
    # read twice, checking that it does not change, and kept for the channels-last test and the
    # start-up probe (items 0..63, twice). Then each of the 2 units reads every item once for
    # all its 4 points; a read per point would be 8 per item.
    want = Counter({i: 2 + 1 * (i < 128) + 2 * (i < 64) for i in range(IMAGES)})
    assert reads(log) == want


# --- 2. mpirun: coordinator and workers, each streaming its units ------------------------------

@pytest.mark.slow
def test_mpirun_with_a_dataset_equals_one_process(images, reference, tmp_path):
    toml = write_toml(tmp_path / "s.toml", job(tmp_path / "s.h5", "dataset", workers=2))
    proc = subprocess.run(mpirun(3) + surface_cmd(toml), capture_output=True, text=True, env=env(), cwd=images,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 workers" in proc.stderr
    assert_same(read(tmp_path / "s.h5"), reference)


# --- 3. SLURM array tasks, each computing its shard of streamed data ---------------------------

@pytest.mark.slow
def test_mpirun_shard_tasks_then_merge_equal_one_process(images, reference, tmp_path):
    from losslandscape.surfacefile import write as surface
    from losslandscape.run.slurm import merge

    spec = specs.from_dict(job(tmp_path / "s.h5", "dataset"))
    prep = prepare(spec)  # what `submit` does before it calls sbatch
    shards = shard_dir(prep.path)
    shards.mkdir()
    for k, share in enumerate(assign_tasks(prep.pending, 2, spec.evaluation.unit_size)):
        surface.create_shard(shards / f"task_{k}.h5", prep.path, share, k, 2, spec.to_json(), [str(images)])
    task = [sys.executable, "-m", "losslandscape", "task", str(shards)]
    # as the array's tasks start: the task id from SLURM, task 1 with two ranks
    for k, launcher in ((0, []), (1, mpirun(2))):
        proc = subprocess.run(launcher + task, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                              env=env(SLURM_ARRAY_TASK_ID=str(k), SLURM_ARRAY_JOB_ID="7"))
        assert proc.returncode == 0, proc.stderr
    assert merge(prep.path) == 9
    assert_same(read(prep.path), reference)


# --- 4. SIGTERM in the middle of a unit --------------------------------------------------------

@pytest.mark.slow
def test_killed_mid_unit_loses_that_unit_only_and_resumes(images, reference, tmp_path):
    surf = tmp_path / "s.h5"
    toml = write_toml(tmp_path / "s.toml", job(surf, "dataset"))
    slow = env(STREAM_DELAY="0.004")  # a unit (250 items) reads for about a second
    proc = subprocess.Popen(surface_cmd(toml), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=slow, cwd=images)
    deadline, written = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None and written < 4:
        time.sleep(0.05)
        try:
            written = int(read(surf)["done"].sum())
        except (OSError, KeyError):
            pass
    if written < 4:
        proc.kill()
        pytest.fail(f"the run ended or stalled before its first unit was written:\n{proc.communicate()[1]}")
    proc.send_signal(signal.SIGTERM)  # while the second unit reads its batches
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "resumable" in err
    partial = read(surf)
    done = partial["done"]
    assert written <= done.sum() < 9  # the units written stay; the one being read is lost
    for k in VALUES:
        np.testing.assert_allclose(partial[k][done], reference[k][done], rtol=1e-5, atol=0)
    again = subprocess.run(surface_cmd(toml), capture_output=True, text=True, env=env(), cwd=images, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_same(read(surf), reference)


SMALL = '''
import torch
from torch import nn


def small():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4))
'''


@pytest.mark.slow  # several seconds: the full suite runs it, `make check` does not
def test_hessian_auto_axes_and_interpolation_stream_like_tensors(images, tmp_path):
    """The other verbs that evaluate the loss take the Dataset too, with the values of tensors:
    "auto" axes (the range search), an interpolation between two checkpoints, the Hessian maps
    and the spectrum at the centre."""
    import json

    import torch

    (images / "streamsmall.py").write_text(SMALL)
    torch.manual_seed(1)
    for k in (1, 2):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 4 * 4, 4))
        torch.save(model.state_dict(), tmp_path / f"m{k}.pt")
    common = ["--model.name=streamsmall:small", f"--model.checkpoint={tmp_path / 'm1.pt'}",
              "--evaluation.device=cpu", "--evaluation.threads=1", "--evaluation.batch_size=64"]
    got = {}
    for factory in ("dataset", "tensors"):
        auto = tmp_path / f"auto-{factory}.h5"
        r = losslandscape("surface", *common, f"--data.name={MODULE}:{factory}", "--grid.x=auto:3", "--grid.y=auto:3",
                          "--grid.auto_samples=0", f"--output.surface={auto}", cwd=images)
        assert r.returncode == 0, r.stderr
        line = losslandscape("hessian", auto, "--centre", "--top-k", "2", "--samples", "40", "--json", cwd=images)
        assert line.returncode == 0, line.stderr
        maps = losslandscape("hessian", auto, "--samples", "40", cwd=images)
        assert maps.returncode == 0, maps.stderr
        inter = tmp_path / f"inter-{factory}.h5"
        r = losslandscape("surface", *common, f"--data.name={MODULE}:{factory}", "--directions.kind=interpolate",
                          f"--model.checkpoint2={tmp_path / 'm2.pt'}", "--grid.x=-0.5:1.5:3",
                          f"--output.surface={inter}", cwd=images)
        assert r.returncode == 0, r.stderr
        with h5py.File(auto, "r") as f, h5py.File(inter, "r") as g:
            got[factory] = {"x": f["xcoordinates"][...], "auto": f["train_loss"][...],
                            "eig": np.stack([f[k][...] for k in ("max_eig", "min_eig")]),
                            "top": json.loads(line.stdout)["top_eigenvalues"], "inter": g["train_loss"][...]}
    s, t = got["dataset"], got["tensors"]
    np.testing.assert_array_equal(s["x"], t["x"])
    np.testing.assert_allclose(s["auto"], t["auto"], rtol=1e-5)
    np.testing.assert_allclose(s["inter"], t["inter"], rtol=1e-5)
    np.testing.assert_allclose(s["eig"], t["eig"], rtol=1e-3)
    np.testing.assert_allclose(s["top"], t["top"], rtol=1e-3)


def test_the_loader_the_tool_builds_for_a_dataset(images):
    """README: a Dataset's loader has evaluation.batch_size, data.workers, pinned memory on CUDA
    (the evaluator asks for it only there) and no shuffling."""
    import torch

    from losslandscape.inputs.data import load_source
    from losslandscape.run.loading import load_evaluator

    spec = specs.from_dict(job(Path("unused.h5"), "dataset", workers=2))
    for pin in (True, False):
        loader = load_source(spec.data, "train", 64, pin=pin).iterable
        assert (loader.batch_size, loader.num_workers, loader.pin_memory) == (64, 2, pin)
        assert isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    evaluator = load_evaluator(spec, torch.device("cpu"))
    assert evaluator.splits["train"].iterable.pin_memory is False  # no CUDA here: nothing to pin for
