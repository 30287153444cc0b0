"""Random directions stored as a seed (`directions.store = "seed"`, issue 31 item 1): the file
records the seed, how the directions are drawn and normalised and a SHA-256 per tensor, not the
vectors; every process and every resume draws them again, tensor by tensor.

The values are checked against plain forward passes of the model moved along directions drawn
here from the documented scheme (numpy PCG64, one stream a tensor and axis), written out in
this file, not taken from the tool.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import drawn, filter_normalised, launch, mpirun, sha
from losslandscape import spec as specs
from losslandscape.errors import UserError
from losslandscape.inputs import data as datasets
from losslandscape.inputs.models import build_model

GRID = "-1:1:3"
SAMPLES = 64  # in batches of 24: the last one holds 16, so a wrong mean over batches shows


def job(folder: Path, ckpt: Path, out: str, store: str, **directions) -> Path:
    table = ", ".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true") for k, v in directions.items())
    path = folder / f"{out}.toml"
    path.write_text(f"""[model]
name = "resnet20"
checkpoint = "{ckpt}"
[data]
name = "digits"
splits = ["train"]
max_samples = {SAMPLES}
[grid]
x = "{GRID}"
y = "{GRID}"
[directions]
store = "{store}"
{table.replace(", ", chr(10))}
[evaluation]
device = "cpu"
threads = 1
batch_size = 24
[output]
surface = "{folder / out}.h5"
""")
    return path


def surface(spec: Path, *args: str, runner: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (runner or [sys.executable]) + ["-m", "losslandscape", "surface", str(spec), *args]
    return launch(cmd) if runner else subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def values(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f[k]) for k in ("train_loss", "train_acc", "train_done")}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("seeded")
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1)
    with torch.no_grad():  # BatchNorm statistics away from 0 and 1, so that the base point matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": model.state_dict()}, d / "model.pt")
    return d / "model.pt"


@pytest.fixture(scope="module")
def made(ckpt) -> dict[str, Path]:
    """The same orthogonalised random surface stored both ways."""
    folder = ckpt.parent
    out = {}
    for store in ("file", "seed"):
        proc = surface(job(folder, ckpt, store, store, orthogonal=True, seed=7))
        assert proc.returncode == 0, proc.stderr
        out[store] = folder / f"{store}.h5"
    return out


def test_seed_and_file_give_the_same_directions_and_values_and_a_plain_forward_pass_agrees(ckpt, made):
    want, got = values(made["file"]), values(made["seed"])
    for k in want:
        assert np.array_equal(want[k], got[k]), k  # the same bits: one scheme serves both stores
    assert got["train_done"].all()
    with h5py.File(made["file"], "r") as f, h5py.File(made["seed"], "r") as g:
        assert f.attrs["directions_sha256"] == g.attrs["directions_sha256"]
        assert "x" not in g["directions"] and g["directions"].attrs["store"] == "seed"
        assert g["directions"].attrs["seed"] == 7 and g["directions/sha256"].shape[1:] == (2, 32)
        stored_x = {k: np.asarray(v, dtype=np.float64) for k, v in f["directions/x"].items()}
    # the directions from the documented scheme, filter-normalised and orthogonalised here
    model = build_model("resnet20", in_channels=1)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    model.eval()
    weights = {k: p.detach().double().numpy() for k, p in model.named_parameters()}
    x = {k: filter_normalised(drawn(k, w.shape, 7, 0), w) for k, w in weights.items()}
    y = {k: filter_normalised(drawn(k, w.shape, 7, 1), w) for k, w in weights.items()}
    coef = sum((x[k] * y[k]).sum() for k in x) / sum((x[k] ** 2).sum() for k in x)
    y = {k: y[k] - coef * x[k] for k in y}
    for k in x:
        np.testing.assert_allclose(stored_x[k], x[k], rtol=1e-5, atol=1e-6 * np.abs(x[k]).max())
    data, targets = datasets.load_split(specs.from_dict({"data": {"name": "digits", "max_samples": SAMPLES}}).data,
                                        "train")
    axis = np.linspace(-1, 1, 3)
    for i, j in ((0, 0), (2, 1), (1, 2)):  # (y index, x index)
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(torch.from_numpy(weights[k] + axis[j] * x[k] + axis[i] * y[k]))
            loss = torch.nn.functional.cross_entropy(model(data).double(), targets).item()
        assert got["train_loss"][i, j] == pytest.approx(loss, rel=2e-5), (i, j)


def test_a_seed_file_takes_kilobytes(made):
    assert made["seed"].stat().st_size < 64 * 1024
    assert made["file"].stat().st_size > 2 * 268_048 * 4  # two stored directions of the moved weights


def test_a_tensor_drawn_differently_stops_the_resume_in_one_line(made, tmp_path):
    path = tmp_path / "seed.h5"
    shutil.copy(made["seed"], path)
    with h5py.File(path, "r+") as f:
        f["train_done"][2, 2] = 0  # one point left to compute
        digests = f["directions/sha256"][...]
        digests[5, 1, 0] ^= 1  # as if tensor 5's y direction came out differently here
        f["directions/sha256"][...] = digests
        name = f["directions/names"][5].decode()
    before = sha(path)
    spec = job(tmp_path, made["seed"].parent / "model.pt", "seed", "seed", orthogonal=True, seed=7)
    proc = surface(spec)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"losslandscape: error: {path}: the y direction of tensor {name} drawn again from seed 7 "
                           "differs from the one the file was made with (SHA-256)"), line
    assert "numpy" in line and "torch" in line and 'directions.store = "file"' in line
    assert sha(path) == before


@pytest.mark.slow  # a command line a field
@pytest.mark.parametrize("bad, words", [
    (("attr", "seed", "seven"), "attribute seed is 'seven'; expected an integer seed"),
    (("attr", "norm", "sideways"), "attributes norm, ignore are sideways, biasbn"),
    (("attr", "orthogonal_coef", float("nan")), "attribute orthogonal_coef is nan; expected a finite number"),
    (("sha", None, None), "sha256 has shape (59, 2, 31)"),
])
def test_a_received_seed_record_is_checked_field_by_field(made, tmp_path, bad, words):
    path = tmp_path / "seed.h5"
    shutil.copy(made["seed"], path)
    with h5py.File(path, "r+") as f:
        g = f["directions"]
        if bad[0] == "attr":
            g.attrs[bad[1]] = bad[2]
        else:
            del g["sha256"]
            g.create_dataset("sha256", data=np.zeros((59, 2, 31), np.uint8))
        f["train_done"][0, 0] = 0
    proc = surface(job(tmp_path, made["seed"].parent / "model.pt", "seed", "seed", orthogonal=True, seed=7))
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("losslandscape: error:") and words in line, line


@pytest.mark.parametrize("kind", ["interpolate", "file", "hessian", "pca"])
def test_every_other_kind_says_in_one_line_why_it_needs_a_file(kind, tmp_path):
    table = {"model": {"name": "resnet20", "checkpoint": "a.pt", "checkpoint2": "b.pt"},
             "data": {"name": "digits"}, "grid": {"x": GRID, **({"y": GRID} if kind == "pca" else {})},
             "directions": {"kind": kind, "store": "seed", "file": "d.h5", "checkpoints": "run/*.pt"}}
    with pytest.raises(UserError, match=rf'^directions.store: "seed" is for random directions; kind = "{kind}" '
                                        r'needs "file" \(.+, not drawn from a seed\)$'):
        specs.check(specs.from_dict(table))


@pytest.mark.slow  # a command line
def test_a_seed_file_is_not_a_direction_file(made, tmp_path):
    proc = surface(job(tmp_path, made["seed"].parent / "model.pt", "other", "file", kind="file",
                       file=str(made["seed"])))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f'losslandscape: error: directions.file: {made["seed"]} records its directions as a seed (directions.store '
        '= "seed"), not as tensors; the same directions are kind = "random" with seed = 7 and norm = "filter" on '
        "the same model")


@pytest.mark.slow
def test_three_ranks_and_a_resume_draw_them_again_and_equal_one_process(made, tmp_path):
    """mpirun -n 3 (two workers, each drawing the directions on its own) equals one process; a
    file with half its points undone, resumed, equals the whole."""
    spec = job(tmp_path, made["seed"].parent / "model.pt", "seed", "seed", orthogonal=True, seed=7)
    proc = surface(spec, "--evaluation.unit_size=1", runner=mpirun(3) + [sys.executable])
    assert proc.returncode == 0, proc.stderr
    want = values(made["seed"])
    got = values(tmp_path / "seed.h5")
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=0)
    with h5py.File(tmp_path / "seed.h5", "r+") as f:
        done = f["train_done"][...]
        done.flat[::2] = 0
        f["train_done"][...] = done
    proc = surface(spec)
    assert proc.returncode == 0 and "5 to compute" in proc.stderr, proc.stderr
    for k, v in values(tmp_path / "seed.h5").items():
        np.testing.assert_allclose(v, want[k], rtol=1e-6, atol=0)


@pytest.mark.slow
def test_hessian_maps_of_a_seed_file_equal_those_of_the_file(made, tmp_path):
    out = {}
    for store in ("file", "seed"):
        path = tmp_path / f"{store}.h5"
        shutil.copy(made[store], path)
        proc = subprocess.run([sys.executable, "-m", "losslandscape", "hessian", str(path), "--samples", "4",
                               "--tol", "1e-1"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(path, "r") as f:
            out[store] = (np.asarray(f["max_eig"]), np.asarray(f["min_eig"]))
    for a, b in zip(out["file"], out["seed"]):
        assert np.array_equal(a, b)


def test_a_gpt2_small_shaped_surface_file_is_under_a_megabyte(tmp_path):
    """GPT-2-small's 148 tensors (12 blocks, its names), at a width of 16: the seed file's size
    depends on the tensors' count and names only, not on their sizes. The weights the Python
    interface keeps beside it hold its tied head once."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import losslandscape as ll

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=12, n_head=2, n_positions=8, vocab_size=50257))
    assert len(dict(model.named_parameters())) == 148
    tokens = torch.randint(0, 50257, (4, 8))
    s = ll.compute_surface(model, (tokens, torch.roll(tokens, -1, 1)), x="-1:1:2", y="-1:1:2", out=tmp_path / "g.h5",
                           threads=1, store="seed", ignore="none")
    assert s.train_loss.shape == (2, 2) and np.isfinite(s.train_loss).all()
    size = (tmp_path / "g.h5").stat().st_size
    assert size < 1 << 20, size
    # the weights the Python call keeps beside it: written once, the tied lm_head with the embedding
    unique = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert (tmp_path / "g.h5.model.pt").stat().st_size < unique + (64 << 10)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert len(f["directions/names"]) == 148 and "x" not in f["directions"]


@pytest.mark.slow
def test_array_tasks_draw_them_again_and_their_merge_equals_one_process(made, tmp_path):
    """The shards of a seed surface, computed by `losslandscape task` (as a SLURM array task runs
    it; here without the scheduler) and merged, equal the whole surface made in one process."""
    from losslandscape.run.slurm import merge, run_task
    from losslandscape.run.work import prepare
    from losslandscape.surfacefile import write as surface_file
    from losslandscape.surfacefile.format import shard_dir
    from losslandscape.numerics.grid import assign_tasks

    spec = specs.load(job(tmp_path, made["seed"].parent / "model.pt", "seed", "seed", orthogonal=True, seed=7))
    prep = prepare(spec)
    folder = shard_dir(prep.path)
    folder.mkdir(exist_ok=True)
    for k, share in enumerate(assign_tasks(prep.pending, 2, spec.evaluation.unit_size)):
        surface_file.create_shard(folder / f"task_{k}.h5", prep.path, share, k, 2, spec.to_json(), [])
    assert run_task(folder, 0) == 0 and run_task(folder, 1) == 0
    assert merge(prep.path) == 9
    want = values(made["seed"])
    for k, v in values(prep.path).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-6, atol=0)


def test_no_direction_held_gives_the_same_bits_and_never_a_whole_direction(made, tmp_path, monkeypatch):
    """evaluation.hold_directions = false: each tensor's direction drawn again at every move, in
    blocks of rows: the same values, bit for bit, as the directions held; no draw larger than a
    block, making the file or moving, and the held-direction lists stay empty."""
    from losslandscape.numerics import directions as dirs
    from losslandscape.numerics import weights as weights_module
    from losslandscape.run.driver import run_serial
    from losslandscape.run.work import SurfaceWork

    monkeypatch.setattr(dirs, "BLOCK", 4096)  # small blocks: every weight tensor in several
    largest = []
    stream = dirs._stream

    class Counted:  # the tensor's numpy stream, counting the values of each draw
        def __init__(self, *args):
            self.rng = stream(*args)

        def standard_normal(self, size, dtype):
            largest.append(int(np.prod(size)))
            return self.rng.standard_normal(size, dtype=dtype)

    monkeypatch.setattr(dirs, "_stream", Counted)
    movers = []
    monkeypatch.setattr(weights_module.WeightMover, "stream_directions",
                        lambda self, make, f=weights_module.WeightMover.stream_directions: (movers.append(self),
                                                                                            f(self, make))[1])
    spec = specs.load(job(tmp_path, made["seed"].parent / "model.pt", "seed", "seed", orthogonal=True, seed=7),
                      {"evaluation.hold_directions": "false"})
    assert run_serial(SurfaceWork(spec)) == 0
    want, got = values(made["seed"]), values(tmp_path / "seed.h5")
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    assert movers and all(m.dx is None and m.dy is None for m in movers)
    # the largest weight tensor has 36,864 elements: every draw, making the file and moving, is a block
    assert len(largest) > 1000 and max(largest) <= 4096, max(largest)


def test_holding_no_direction_needs_a_seed():
    table = {"model": {"name": "resnet20"}, "data": {"name": "digits"}, "grid": {"x": GRID},
             "evaluation": {"hold_directions": False}}
    with pytest.raises(UserError, match=r'^evaluation.hold_directions: false needs directions.store = "seed" '):
        specs.check(specs.from_dict(table))


@pytest.mark.slow
def test_a_tensor_drawn_differently_on_a_worker_ends_the_mpi_job_in_seconds(made, tmp_path):
    """The digest check runs on every worker as it draws the directions: under mpirun -n 3 a
    mismatch ends the whole job within seconds with the one line, and the file is untouched."""
    import time

    path = tmp_path / "seed.h5"
    shutil.copy(made["seed"], path)
    with h5py.File(path, "r+") as f:
        f["train_done"][...] = 0  # everything to compute again
        digests = f["directions/sha256"][...]
        digests[7, 0, 0] ^= 1
        f["directions/sha256"][...] = digests
        name = f["directions/names"][7].decode()
    before = sha(path)
    spec = job(tmp_path, made["seed"].parent / "model.pt", "seed", "seed", orthogonal=True, seed=7)
    started = time.monotonic()
    proc = surface(spec, "--evaluation.hold_directions=false", runner=mpirun(3) + [sys.executable])
    assert proc.returncode != 0
    assert time.monotonic() - started < 60
    lines = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert lines and f"the x direction of tensor {name} drawn again from seed 7 differs" in lines[0], proc.stderr
    assert sha(path) == before


def test_a_bf16_base_stays_bf16_and_no_direction_is_held_when_streamed():
    """What a worker holds, by dtype: bf16 weights keep a bf16 base and float32 directions; with
    the directions drawn again, none at all (the README's bytes a parameter)."""
    from losslandscape.numerics import directions as dirs
    from losslandscape.numerics.weights import WeightMover

    torch.manual_seed(0)
    live = {"w": torch.randn(6, 5).to(torch.bfloat16), "v": torch.randn(4, 3)}
    held = WeightMover({k: t.clone() for k, t in live.items()})
    x = dirs.SeededDirection(live, 1, 0, "filter", "none")
    held.set_directions(x, None)
    assert [t.dtype for t in held.base] == [torch.bfloat16, torch.float32]
    assert [t.dtype for t in held.dx] == [torch.float32, torch.float32]
    streamed = WeightMover({k: t.clone() for k, t in live.items()})
    streamed.stream_directions(lambda base: (dirs.SeededDirection(base, 1, 0, "filter", "none"), None))
    assert streamed.dx is None and streamed.dy is None and streamed.base[0].dtype == torch.bfloat16
    held.move_to(0.5)
    streamed.move_to(0.5)
    for a, b in zip(held.live, streamed.live):
        assert torch.equal(a, b)
    # independently: float32(base) + 0.5 d, rounded once to bf16
    d = dirs.SeededDirection(live, 1, 0, "filter", "none")["w"]
    assert torch.equal(held.live[0], (live["w"].float() + 0.5 * d).to(torch.bfloat16))
