"""One model across several ranks (`evaluation.ranks_per_model = K`, issue 31 item 4): the
workers of an MPI job form groups of K ranks, each group holding one model sharded by rows
(FSDP2 over gloo here), each rank moving its own rows and evaluating its share of the batches.

The values are checked against one process and against plain forward passes of a tiny GPT-2
moved along directions drawn here from the documented scheme (helpers.drawn), written out,
not taken from the tool. The tests of failures and resumption run a plain-torch network of
the same shape of data (`tiny`), checked against one process of it: importing transformers
costs every rank seconds. Its vocabulary (101) and widths (30) do not divide by 2, so shards
are uneven; 22 sequences in batches of 4 give 6 batches, and the digits run 5 (an odd round).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import drawn, filter_normalised, launch, mpirun
from losslandscape.run.status import parallel_models

pytestmark = pytest.mark.slow  # real mpirun with 3-5 ranks

LM = '''
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).parent


def model():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=101, n_positions=12, n_embd=30, n_layer=2, n_head=2,
                                      initializer_range=0.2, bos_token_id=0, eos_token_id=0))


def tiny():
    """Token embeddings, two residual MLP blocks and a head in plain torch: for the tests of
    failures and resumption, where which network it is does not matter, and importing
    transformers would cost each rank seconds."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(30), nn.Linear(30, 30)

        def forward(self, h):
            return h + torch.tanh(self.fc(self.norm(h)))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(101, 30)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(30, 101)

        def forward(self, ids):
            h = self.wte(ids)
            for block in self.blocks:
                h = block(h)
            return self.head(h)

    torch.manual_seed(0)
    return Tiny()


def llama():
    """A tiny Llama (its rotary embedding's inverse frequencies: a buffer computed, not saved);
    notes where the parameters it builds are (the tool builds it without them: meta)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                     initializer_range=0.2))
    (HERE / f"built.{os.environ.get('OMPI_COMM_WORLD_RANK', 'one')}").write_text(str(next(m.parameters()).device))
    return m


def tokens(split):
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    return torch.randint(0, 101, (22, 13), generator=g)


def data(split):
    """(tokens, next tokens) in batches of 4: 6 batches, the last of 2."""
    ids = tokens(split)
    return DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=4)


def slow(outputs, targets):
    """Token cross entropy, an eighth of a second a batch; writes this rank's pid once, whole
    (renamed into place, so that the test never reads it half written)."""
    if not getattr(slow, "written", False):
        rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
        part = HERE / f"pid.{rank}.part"
        part.write_text(str(os.getpid()))
        part.replace(HERE / f"pid.{rank}")
        slow.written = True
    time.sleep(0.08)
    return fails(outputs, targets, never=True)


def probe_fails(outputs, targets):
    """On world rank 2, an error at once (the probe of the first split's first batch)."""
    if os.environ.get("OMPI_COMM_WORLD_RANK") == "2":
        raise RuntimeError("the loss failed on purpose at the probe")
    return fails(outputs, targets, never=True)


def fails(outputs, targets, never=False):
    """Token cross entropy (sum, count, correct); on world rank 2, past its first 30 batches, an error."""
    calls = getattr(fails, "calls", 0) + 1
    fails.calls = calls
    if not never and os.environ.get("OMPI_COMM_WORLD_RANK") == "2" and calls > 30:
        raise RuntimeError("the loss failed on purpose")
    logits = getattr(outputs, "logits", outputs).float().flatten(0, 1)
    t = targets.flatten()
    s = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
    return s, t.numel(), (logits.argmax(-1) == t).sum()
'''

SPEC = '''[model]
name = "lmk:{model}"
[data]
name = "lmk:data"
splits = ["train", "test"]
[grid]
x = "-1:1:3"
y = "-1:1:3"
[directions]
store = "{store}"
seed = 5
[evaluation]
device = "cpu"
threads = 1
ranks_per_model = {k}
unit_size = 2
hold_directions = {hold}
loss = "{loss}"
[output]
surface = "{out}"
'''
VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lmk")
    (d / "lmk.py").write_text(LM)
    return d


def job(folder: Path, name: str, k: int = 2, store: str = "seed", hold: bool = True,
        loss: str = "cross_entropy", model: str = "model") -> Path:
    """A spec of the tiny GPT-2 (`model`), or of `tiny`, the plain-torch network."""
    path = folder / f"{name}.toml"
    path.write_text(SPEC.format(store=store, k=k, hold=str(hold).lower(), loss=loss, out=folder / f"{name}.h5",
                                model=model))
    return path


def surface(folder: Path, spec: Path, ranks: int = 0, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "losslandscape", "surface", str(spec), *args]
    if ranks:
        return launch(mpirun(ranks) + cmd, timeout, cwd=folder)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=folder, timeout=timeout)


def values(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f[k]) for k in (*VALUES, "train_done", "test_done")}


@pytest.fixture(scope="module")
def one(lm) -> dict[str, np.ndarray]:
    """The surface computed by one process holding the whole model."""
    proc = surface(lm, job(lm, "one", k=1))
    assert proc.returncode == 0, proc.stderr
    return values(lm / "one.h5")


@pytest.fixture(scope="module")
def one_tiny(lm) -> dict[str, np.ndarray]:
    """The same of the plain-torch network."""
    proc = surface(lm, job(lm, "one_tiny", k=1, model="tiny"))
    assert proc.returncode == 0, proc.stderr
    return values(lm / "one_tiny.h5")


def assert_equal(got: dict, want: dict) -> None:
    assert got["train_done"].all() and got["test_done"].all()
    for k in VALUES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-9, err_msg=k)


def held_shares(stderr: str) -> dict[int, float]:
    """{rank: the share of the model's parameter values it logs holding}."""
    return {int(r): int(a) / int(b) for r, a, b in
            re.findall(r"rank (\d+): holds (\d+) of the model's (\d+) parameter values", stderr)}


def started_until(folder: Path, spec: Path, name: str, points: int) -> tuple[subprocess.Popen, Path]:
    """mpirun -n 3 of `spec` (its loss writes each rank's pid), returned once the surface file
    `name` has `points` points done, the job still running."""
    for p in folder.glob("pid.*"):
        p.unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    proc = subprocess.Popen(mpirun(3) + [sys.executable, "-m", "losslandscape", "surface", str(spec)], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    surf = folder / name
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with h5py.File(surf, "r", locking=False) as f:
                if f["test_done"][()].sum() >= points:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return proc, surf


def test_two_groups_of_two_equal_one_process_and_a_plain_forward_pass(lm, one):
    """mpirun -n 5, ranks_per_model = 2: two groups of two ranks, each rank holding half the model
    and reading its rows of the directions stored in the file (store = "file"; the other tests
    draw them from the seed)."""
    proc = surface(lm, job(lm, "k2", store="file"), 5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = values(lm / "k2.h5")
    assert_equal(got, one)
    shares = held_shares(proc.stderr)
    assert sorted(shares) == [1, 2, 3, 4], proc.stderr[-3000:]
    assert all(abs(s - 0.5) < 0.01 for s in shares.values()), shares
    assert "4 workers" in proc.stderr
    # a plain forward pass of the model moved to x = 1 along the x direction drawn here
    sys.path.insert(0, str(lm))
    try:
        import lmk
    finally:
        sys.path.remove(str(lm))
    model = lmk.model().eval()
    with torch.no_grad():
        for k, p in model.named_parameters():
            w = p.detach().double().numpy()
            p.copy_(torch.from_numpy(w + filter_normalised(drawn(k, w.shape, 5, 0), w)))
        ids = lmk.tokens("test")
        logits = model(ids[:, :-1]).logits.double()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
    assert got["test_loss"][1, 2] == pytest.approx(loss, rel=1e-5)


def test_no_direction_held_gives_the_same_values(lm, one_tiny):
    """hold_directions = false: each rank draws its own rows of each tensor at every move."""
    proc = surface(lm, job(lm, "stream", hold=False, model="tiny"), 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "this rank's rows only" in proc.stderr
    assert_equal(values(lm / "stream.h5"), one_tiny)


def test_an_image_model_in_memory_equals_one_process(tmp_path):
    """resnet20 on digits held in memory (not streamed): 70 samples in batches of 16 are 5 batches,
    so one rank runs the last round's batch again and counts nothing."""
    spec = tmp_path / "r.toml"
    spec.write_text('[model]\nname = "resnet20"\n[data]\nname = "digits"\nsplits = ["train"]\nmax_samples = 70\n'
                    '[grid]\nx = "-1:1:3"\n[evaluation]\ndevice = "cpu"\nthreads = 1\nbatch_size = 16\n'
                    f'ranks_per_model = 2\n[output]\nsurface = "{tmp_path / "r2.h5"}"\n')
    proc = surface(tmp_path, spec, 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BatchNorm not folded: the model is sharded" in proc.stderr
    ref = surface(tmp_path, spec, 0, "--evaluation.ranks_per_model=1", f"--output.surface={tmp_path / 'r1.h5'}")
    assert ref.returncode == 0, ref.stderr
    with h5py.File(tmp_path / "r1.h5", "r") as f, h5py.File(tmp_path / "r2.h5", "r") as g:
        np.testing.assert_allclose(g["train_loss"][()], f["train_loss"][()], rtol=1e-6)
        np.testing.assert_allclose(g["train_acc"][()], f["train_acc"][()], rtol=0, atol=1e-9)


def test_a_failing_rank_of_a_group_ends_the_job_in_seconds_with_one_line(lm):
    """World rank 2 raises in its loss past its 30th batch, while rank 1 of its group waits for it
    in a collective: the coordinator ends the job after its 10 s grace, with the one line."""
    t0 = time.monotonic()
    proc = surface(lm, job(lm, "fails", loss="lmk:fails", model="tiny"), 3, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(errors) == 1 and "rank 2" in errors[0] and "the loss failed on purpose" in errors[0], proc.stderr[-3000:]
    assert took < 45, took  # start-up (~12 s) + the grace (10 s), not a hang


def test_a_killed_rank_ends_the_job_and_the_resume_equals_a_clean_run(lm, one_tiny):
    spec = job(lm, "killed", loss="lmk:slow", model="tiny")
    proc, surf = started_until(lm, spec, "killed.h5", 2)
    os.kill(int((lm / "pid.2").read_text()), signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    with h5py.File(surf, "r") as f:
        done = int(f["test_done"][()].sum())
    assert 2 <= done < 9, err[-2000:]
    again = surface(lm, spec, 3)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} of 9 points done" in again.stderr
    assert_equal(values(surf), one_tiny)  # the same token cross entropy, summed by the user's loss


@pytest.mark.parametrize("ranks, words", [(0, ["evaluation.ranks_per_model: 2", "one process", "mpirun -n 3"]),
                                          (4, ["evaluation.ranks_per_model: 2", "3 worker", "mpirun -n 3"])])
def test_a_job_whose_workers_do_not_form_groups_is_one_line(lm, ranks, words):
    proc = surface(lm, job(lm, f"bad{ranks}"), ranks, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), proc.stderr[-2000:]
    assert not (lm / f"bad{ranks}.h5").exists()


def test_slurm_array_tasks_of_two_groups_equal_one_process(lm, one_tiny, slurm):
    """`submit --tasks 2 --ranks-per-task 3` on the real local SLURM cluster: each array task is
    an MPI job of a coordinator and one group of two ranks sharing the model; the merge equals
    one process."""
    spec = job(lm, "array", model="tiny")
    # this machine's one node has 2 CPUs: a task of 3 ranks asks to overcommit them
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(spec), "--tasks", "2",
                           "--ranks-per-task", "3", "--sbatch-arg=--overcommit"], capture_output=True, text=True,
                          env=slurm.env, cwd=lm, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"array job (\d+) \((\d+) tasks\), merge job (\d+)", proc.stdout)
    slurm.wait([m.group(1), m.group(3)], timeout=300)
    logs = "\n".join(p.read_text() for p in sorted((lm / "array.h5.shards").glob("*.log")))
    assert slurm.state(m.group(3)) == "COMPLETED", logs[-4000:]
    held = re.findall(r"rank [12]: holds (\d+) of the model's (\d+) parameter values", logs)
    assert len(held) == 4, logs[-4000:]  # two tasks, two ranks each holding half the model
    assert all(abs(int(a) / int(b) - 0.5) < 0.01 for a, b in held), held
    assert_equal(values(lm / "array.h5"), one_tiny)
    # status's ETA divides by the models evaluating at once: 2 running tasks of one group each
    record = json.loads((lm / "array.h5.shards" / "submission.json").read_text())
    assert record["ranks_per_task"] == 3 and record["ranks_per_model"] == 2, record
    assert parallel_models(record, 2) == 2 and parallel_models({**record, "ranks_per_model": 1}, 2) == 4


def test_submit_refuses_tasks_whose_workers_do_not_form_groups(lm):
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(job(lm, "badtasks")), "--tasks", "2",
                           "--ranks-per-task", "4"], capture_output=True, text=True, cwd=lm, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(errors) == 1 and "--ranks-per-task: 4 ranks give 3 worker(s)" in errors[0], proc.stderr
    assert not (lm / "badtasks.h5").exists()


def test_a_signal_to_one_rank_of_a_group_stops_the_group_together_and_the_file_resumes(lm, one_tiny):
    """SIGTERM to world rank 2 only: its group agrees to stop before the next point (rank 1 was
    not signalled), the job exits 3 (stopped), and the same command completes the file."""
    spec = job(lm, "signalled", loss="lmk:slow", model="tiny")
    proc, surf = started_until(lm, spec, "signalled.h5", 2)
    os.kill(int((lm / "pid.2").read_text()), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    assert "stopped early" in err and "is resumable" in err
    with h5py.File(surf, "r") as f:
        done = int(f["test_done"][()].sum())
    assert 2 <= done < 9
    again = surface(lm, spec, 3)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} of 9 points done" in again.stderr
    assert_equal(values(surf), one_tiny)


def _lmk(lm: Path):
    sys.path.insert(0, str(lm))
    try:
        import lmk
    finally:
        sys.path.remove(str(lm))
    return lmk


def _test_loss(model, lmk) -> float:
    """A plain forward pass: the mean token cross entropy of the test split."""
    with torch.no_grad():
        ids = lmk.tokens("test")
        logits = model.eval()(ids[:, :-1]).logits.double()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()


def test_an_interpolation_between_two_checkpoints_is_made_a_tensor_at_a_time_and_read_by_rows(lm):
    """directions.kind = "interpolate" between two safetensors checkpoints, K = 2: the coordinator
    builds both models on the meta device and makes the direction a tensor at a time; each rank
    reads its rows of it from the file. Equal to one process, and x = 1 is the second model (a
    plain forward pass of it)."""
    from safetensors.torch import load_model, save_model

    lmk = _lmk(lm)
    ends = []
    for k, scale in enumerate((1.3, 0.8)):
        m = lmk.llama()
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(scale).add_(0.05 * k)
        ends.append(lm / f"end{k}.safetensors")
        save_model(m, str(ends[-1]))
    args = ("--model.name=lmk:llama", f"--model.checkpoint={ends[0]}", f"--model.checkpoint2={ends[1]}",
            "--directions.kind=interpolate", "--grid.x=0:1:3", "--grid.y=")
    for p in lm.glob("built.*"):
        p.unlink()
    alone = surface(lm, job(lm, "interp1", k=1, store="file"), 0, *args)
    assert alone.returncode == 0, alone.stderr[-3000:]
    proc = surface(lm, job(lm, "interp2", k=2, store="file"), 3, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_text() for p in lm.glob("built.*") if p.name != "built.one"} == {
        "built.0": "meta", "built.1": "meta", "built.2": "meta"}
    got, want = values(lm / "interp2.h5"), values(lm / "interp1.h5")
    assert_equal(got, want)
    second = lmk.llama()
    load_model(second, str(ends[1]))
    assert got["test_loss"][2] == pytest.approx(_test_loss(second, lmk), rel=1e-5)


def test_a_checkpoint_is_read_by_rows_on_every_rank_and_equals_one_process_and_a_plain_forward_pass(lm):
    """With a model.checkpoint, no rank builds the model whole: each builds it with its parameters
    on the meta device (the factory's parameters are meta there, its rotary buffer real) and reads
    its rows of them from the safetensors file; rank 0 draws the seeded directions against the
    checkpoint a tensor at a time. The values equal one process, which loads the checkpoint whole,
    and at the centre a plain forward pass of the checkpoint's model."""
    from safetensors.torch import load_model, save_model

    lmk = _lmk(lm)
    trained = lmk.llama()
    with torch.no_grad():  # weights other than the factory's own initialisation
        for p in trained.parameters():
            p.mul_(1.3).add_(0.05)
    checkpoint = lm / "llama.safetensors"
    save_model(trained, str(checkpoint))
    args = ("--model.name=lmk:llama", f"--model.checkpoint={checkpoint}")
    for p in lm.glob("built.*"):
        p.unlink()
    alone = surface(lm, job(lm, "llama1", k=1), 0, *args)
    assert alone.returncode == 0, alone.stderr[-3000:]
    proc = surface(lm, job(lm, "llama2", k=2), 3, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = {p.name: p.read_text() for p in lm.glob("built.*")}
    assert built == {"built.one": "cpu", "built.0": "meta", "built.1": "meta", "built.2": "meta"}, built
    got, want = values(lm / "llama2.h5"), values(lm / "llama1.h5")
    assert_equal(got, want)
    shares = held_shares(proc.stderr)
    assert sorted(shares) == [1, 2] and all(abs(s - 0.5) < 0.02 for s in shares.values()), shares
    model = lmk.llama()
    load_model(model, str(checkpoint))
    assert got["test_loss"][1, 1] == pytest.approx(_test_loss(model, lmk), rel=1e-5)


def test_a_tensor_drawn_differently_on_a_later_rank_of_a_group_stops_the_job_in_one_line(lm, one_tiny):
    """The ranks of a group share the check of a seed file's digests (rank r checks tensors r,
    r + K, ...): a tensor that comes out differently, checked by the group's second rank, is
    one line, and no point is computed."""
    import shutil

    path = lm / "tampered.h5"
    shutil.copy(lm / "one_tiny.h5", path)
    with h5py.File(path, "r+") as f:
        f["train_done"][2, 2] = 0  # one point left to compute
        digests = f["directions/sha256"][...]
        digests[1, 0, 0] ^= 1  # tensor 1: the second rank's of each group of two
        f["directions/sha256"][...] = digests
        name = f["directions/names"][1].decode()
    before = values(path)
    proc = surface(lm, job(lm, "tampered", k=2, model="tiny"), 3)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"the x direction of tensor {name} drawn again from seed 5 differs" in errors[0], errors
    after = values(path)  # no point computed (the run's note on folding may be added: it is sharded)
    assert all(np.array_equal(after[k], before[k], equal_nan=True) for k in before) and not after["train_done"][2, 2]


def test_a_rank_whose_probe_fails_ends_the_job_in_seconds_with_its_line(lm):
    """A model read from a checkpoint is probed once sharded, every rank of its group together: one rank's loss raising on
    the first split's batch ends the job in seconds (its partner does not wait for it in the
    second split's gathers until the group's timeout of 120 s), with that rank's line."""
    from safetensors.torch import save_model

    checkpoint = lm / "probed.safetensors"  # built on the meta device: probed once sharded
    save_model(_lmk(lm).llama(), str(checkpoint))
    start = time.monotonic()
    proc = surface(lm, job(lm, "probe", loss="lmk:probe_fails"), 3, "--model.name=lmk:llama",
                   f"--model.checkpoint={checkpoint}", timeout=200)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "rank 2" in errors[0] and "failed on purpose at the probe" in errors[0], errors
    assert took < 60, took
    assert not (lm / "probe.h5").exists()
