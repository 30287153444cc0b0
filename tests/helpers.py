"""What several test files share, in one module: no test file imports another.

Fixtures live in conftest.py; this module holds plain functions and constants: where the
project and its scripts are, how to launch mpirun and the console script, small job specs
(resnet20 on digits; a tiny linear model; a model that fails on a chosen rank), independent
reference computations, and the one-line error checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.frontends import cli
from losslandscape.inputs import data as datasets
from losslandscape.inputs.models import build_model

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_job(path: Path, ckpt: Path, surface: Path, x: str, y: str, samples: int, unit: int = 2,
              splits: tuple[str, ...] = ("train", "test"), threads: int = 0) -> Path:
    """A TOML job spec for resnet20 on digits, as a user would write it; returns its path."""
    path.write_text(f"""
[model]
name = "resnet20"
checkpoint = "{ckpt}"
[data]
name = "digits"
splits = {list(splits)!r}
max_samples = {samples}
[grid]
x = "{x}"
y = "{y}"
[evaluation]
device = "cpu"
threads = {threads}
unit_size = {unit}
[output]
surface = "{surface}"
""".replace("'", '"'))
    return path


# --- mpirun ------------------------------------------------------------------------------------------

def mpirun(n: int) -> list[str]:
    exe = shutil.which("mpirun")
    if exe is None:
        pytest.fail("mpirun is not on PATH: `make install` installs Open MPI")
    cmd = [exe, "--oversubscribe", "-n", str(n)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


def launch(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an mpirun command with this process's environment minus Open MPI's own variables:
    a test that ran a task in-process initialised MPI here (a singleton), and an mpirun that
    inherits its OMPI_/PMIX_ variables believes it is inside that job and exits 1 silently."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def rank_pids(mpirun_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(mpirun_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# --- the console script and its one-line errors ------------------------------------------------------

SCRIPT = Path(sys.executable).with_name("losslandscape")
if not SCRIPT.exists():  # not run from the project's virtual environment
    SCRIPT = Path(shutil.which("losslandscape") or SCRIPT)


def console(*args, cwd) -> subprocess.CompletedProcess:
    """The installed console script in a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def losslandscape(*args, cwd) -> subprocess.CompletedProcess:
    """`cli.main` in this process (the console script calls it; `console` checks that path), with what
    it prints and its exit status, as `console` would give them, without starting Python and torch anew."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    logging.getLogger().handlers.clear()  # the handler cli.main installed writes to `err`
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("losslandscape: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --- the Makefile, run with a stand-in virtual environment -------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH")


def fake_venv(tmp_path: Path) -> Path:
    """A VENV whose bin/python only records its arguments in python.log and succeeds, so the
    real Makefile runs every recipe without installing anything (h5py counts as built)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {venv}/python.log\nexit 0\n')
    py.chmod(0o755)
    return venv


def make(venv: Path, *args: str, spec: str | None = None) -> str:
    """`make VENV=venv [TORCH_SPEC=spec] args` in the repository; its stdout."""
    # an outer `make test TORCH_SPEC=...` passes its variables down in MAKEFLAGS: not to this one
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL", "TORCH_SPEC", "VENV")}
    cmd = ["make", f"VENV={venv}", *([f"TORCH_SPEC={spec}"] if spec is not None else []), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# --- independent references for resnet20 on digits ---------------------------------------------------

def fresh_model(ckpt: Path) -> torch.nn.Module:
    model = build_model("resnet20", in_channels=1)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    return model.eval()


def plain_pass(model: torch.nn.Module, split: str, max_samples: int = 300) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a plain forward pass over the whole split at once."""
    datasets._load.cache_clear()
    x, y = datasets._load("digits", "", split, max_samples, 0)
    with torch.no_grad():
        out = model(x).double()
    return F.cross_entropy(out, y).item(), 100.0 * (out.argmax(1) == y).double().mean().item()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- headless chromium -------------------------------------------------------------------------------

def run_chromium(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page` with no network: a proxy that refuses every connection and
    no host name that resolves. The page's console goes to stderr (INFO:CONSOLE lines)."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",  # software WebGL
        "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args, page.resolve().as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish in 120 s")
    if proc.returncode != 0:
        pytest.fail(f"headless chromium failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc


# --- a model that fails on a chosen rank -------------------------------------------------------------

# A user's model, beside the job spec: a small CNN without BatchNorm (so every forward
# pass runs this code) that fails on the rank named by the environment.
FLAKY = '''
import os
import torch
from torch import nn


def _mine(variable):
    return os.environ.get("OMPI_COMM_WORLD_RANK", "0") == os.environ.get(variable)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        busy = os.path.join(os.path.dirname(__file__), "slow-rank-busy")
        if _mine("SLOW_RANK") and self.calls > 4:  # after the fold check, the start-up probe and 2 points
            import time
            open(busy, "w").close()
            time.sleep(120)  # a worker busy with a long unit
        if _mine("FLAKY_RANK") and self.calls > int(os.environ.get("FLAKY_AFTER", "0")):
            import time
            deadline = time.monotonic() + 60
            while os.environ.get("SLOW_RANK") and not os.path.exists(busy) and time.monotonic() < deadline:
                time.sleep(0.05)  # fail only once the slow rank is busy, however slowly it started
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build():
    if _mine("BROKEN_RANK"):
        raise RuntimeError("the model factory broke on this rank")
    return Net()
'''

FLAKY_CLEAN = {k: "" for k in ("FLAKY_RANK", "BROKEN_RANK", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS",
                         "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")}


def flaky_job(folder: Path, surface: Path, grid: str = "-1:1:9") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flaky.py").write_text(FLAKY)
    spec = folder / "job.toml"
    spec.write_text(f'''
[model]
name = "flaky:build"
[data]
name = "digits"
splits = ["train"]
max_samples = 100
[grid]
x = "{grid}"
y = "{grid}"
[evaluation]
device = "cpu"
unit_size = 2
[output]
surface = "{surface}"
''')
    return spec


# --- a tiny linear model on 32 digits, and its values computed independently -------------------------

TINY_SAMPLES = 32
TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


def tiny_job(folder: Path, surface: Path, x: str, y: str = "", unit: int = 8, name: str = "job.toml",
        extra: str = "", module: str = "dftiny") -> Path:
    """A job spec for the linear model (module `module`, beside the spec) on 32 digits."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(TINY)
    spec = folder / name
    spec.write_text(f'''
[model]
name = "{module}:build"
[data]
name = "digits"
splits = ["train"]
max_samples = {TINY_SAMPLES}
[grid]
x = "{x}"
y = "{y}"
[evaluation]
device = "cpu"
threads = 1
unit_size = {unit}
[output]
surface = "{surface}"
{extra}''')
    return spec


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `losslandscape: error:` line of a refused run: exit 1, no traceback, no segfault."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def tiny_values(surface: Path) -> dict[str, np.ndarray]:
    """Loss and accuracy at every grid point, by a plain forward pass of the moved linear model
    (the directions read from the file), the whole grid at once in float64."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 10)
    datasets._load.cache_clear()
    x, y = datasets._load("digits", "", "train", TINY_SAMPLES, 0)
    with h5py.File(surface, "r", locking=False) as f:
        xs = torch.from_numpy(f["xcoordinates"][...])
        ys = torch.from_numpy(f["ycoordinates"][...]) if "ycoordinates" in f else torch.zeros(1, dtype=torch.float64)
        dx = {k: torch.from_numpy(f["directions/x"][k][...]).double() for k in f["directions/x"]}
        dy = ({k: torch.from_numpy(f["directions/y"][k][...]).double() for k in f["directions/y"]}
              if "y" in f["directions"] else {k: torch.zeros_like(v) for k, v in dx.items()})
        shape = f["train_done"].shape
    a, b = torch.meshgrid(xs, ys, indexing="xy")
    w0, b0 = lin.weight.detach().double(), lin.bias.detach().double()  # (ny, nx): row j is y[j]
    a, b = a.reshape(-1, 1, 1), b.reshape(-1, 1, 1)
    w = w0 + a * dx["1.weight"] + b * dy["1.weight"]  # (P, 10, 64)
    bias = b0 + a[:, 0] * dx["1.bias"] + b[:, 0] * dy["1.bias"]  # (P, 10)
    logits = torch.einsum("pij,sj->psi", w, x.flatten(1).double()) + bias[:, None, :]  # (P, S, 10)
    loss = torch.stack([F.cross_entropy(z, y) for z in logits])
    acc = 100.0 * (logits.argmax(-1) == y).double().mean(-1)
    return {"train_loss": loss.numpy().reshape(shape), "train_acc": acc.numpy().reshape(shape)}


def assert_values(surface: Path, want: dict[str, np.ndarray]) -> None:
    with h5py.File(surface, "r", locking=False) as f:
        assert f["train_done"][...].all()
        for k, v in want.items():
            np.testing.assert_allclose(f[k][...], v, rtol=2e-5, atol=1e-6)


def done_count(surface: Path) -> int:
    with h5py.File(surface, "r", locking=False) as f:
        return int(f["train_done"][...].sum())


def in_process(spec_path: Path, run: bool = True):
    """Make (and with `run`, compute or just annotate) a surface in this process: cheap set-up."""
    from losslandscape import spec as specs
    from losslandscape.run.distributed import run_serial
    from losslandscape.run.work import SurfaceWork, prepare

    from losslandscape.surfacefile import lock as writelock

    spec = specs.load(spec_path)
    try:
        return run_serial(SurfaceWork(spec)) if run else prepare(spec)
    finally:
        writelock.release_all()  # prepare's lock lasts as long as its process (the `directions` verb's)
