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
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.frontends import cli
from losslandscape.inputs import data as datasets
from losslandscape.inputs.models import build_model
from losslandscape.render import render, summarize

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

def fast_sample(values, keep) -> list:
    """`values` as test parameters, those not in `keep` marked slow: a fuzz or crafted-input matrix
    keeps a seeded sample in `make check` and runs whole in `make test`."""
    keep = set(keep)
    return [pytest.param(v, marks=() if v in keep else pytest.mark.slow) for v in values]


def ctrl_c_as_at_a_terminal() -> None:
    """`preexec_fn` for a child that a test interrupts with SIGINT: a shell starts background jobs
    (and so a CI run started with `&`) with SIGINT ignored, and an ignored signal stays ignored
    across exec; a user's Ctrl-C reaches a process whose SIGINT is the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# The files that take longest, measured in a whole run of the suite (the seconds its three
# processes spent in each file, most first), start first: `make test` hands out a file at a time
# in this order (--dist loadfile --no-loadscope-reorder), so none of them starts last and
# runs on alone while the other processes are done. The rest follow in their usual order.
LONGEST_FIRST = ("test_ranks_per_model.py", "test_paper.py", "test_slurm.py", "test_seeded.py", "test_failures.py",
                 "test_streaming.py", "test_mpi.py", "test_hessmap.py", "test_mpi_probe.py", "test_diskfaults.py",
                 "test_surface.py", "test_trajectory_run.py", "test_render.py", "test_autorange.py", "test_trace.py",
                 "test_writelock.py", "test_anydata.py", "test_twonodes.py")


def mpirun(n: int) -> list[str]:
    exe = shutil.which("mpirun")
    if exe is None:
        pytest.fail("mpirun is not on PATH: `make install` installs Open MPI")
    cmd = [exe, "--oversubscribe", "-n", str(n)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


def launch(cmd: list[str], timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run an mpirun command with this process's environment minus Open MPI's own variables:
    a test that ran a task in-process initialised MPI here (a singleton), and an mpirun that
    inherits its OMPI_/PMIX_ variables believes it is inside that job and exits 1 silently."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


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
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL", "TORCH_SPEC", "VENV", "PYTEST_ARGS",
                        "TEST_WORKERS")}
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
            with open(os.path.join(os.path.dirname(__file__), "flaky-raised"), "w") as fh:
                fh.write(repr(time.time()))  # when: a test times the grace the others get from here
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
    from losslandscape.run.driver import run_serial
    from losslandscape.run.work import SurfaceWork, prepare

    from losslandscape.surfacefile import lock as writelock

    spec = specs.load(spec_path)
    try:
        return run_serial(SurfaceWork(spec)) if run else prepare(spec)
    finally:
        writelock.release_all()  # prepare's lock lasts as long as its process (the `directions` verb's)


# --- surface files written by hand for the renderer, and reading its figures --------------------

ROOT = Path(__file__).resolve().parents[1]


# The paraboloid's grid: x step 0.15, y step 0.2, origin on the grid; neither
# sqrt(1) nor sqrt(1/2) is a grid coordinate, so the basin radii are unambiguous.
PX = np.linspace(-1.5, 1.5, 21)


PY = np.linspace(-1.4, 1.4, 15)


def write_surface(path, x, y=None, values=None, done=None, original=False, model="resnet56", spec=None):
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=np.float64)
        for name, data in (values or {}).items():
            f[name] = np.asarray(data, dtype=np.float64)
        if not original:
            f.attrs["format"] = "losslandscape-surface"
            f.attrs["format_version"] = 1
            f.attrs["spec"] = json.dumps(spec or {"model": {"name": model}, "grid": {"x": "-1.5:1.5:21"}})
            for name, flags in (done or {}).items():
                f[name] = np.asarray(flags, dtype=np.uint8)
    return Path(path)


def paraboloid():
    X, Y = np.meshgrid(PX, PY)  # (ny, nx)
    return X**2 + 2 * Y**2


def assert_png(path: Path) -> None:
    """A real picture: PNG magic, paper-figure size, and not blank."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert 600 <= w <= 2200 and 400 <= h <= 1600, (path, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank"
    packed = (rgb * 255).astype(np.uint32)
    colours = np.unique(packed[..., 0] << 16 | packed[..., 1] << 8 | packed[..., 2])
    assert colours.size > 50, f"{path} has only {colours.size} colours"


def page_figure(path: Path) -> dict:
    """The Plotly figure of an HTML page, {"data": [...], "layout": {...}}, read from its Plotly.newPlot call."""
    text = path.read_text()
    calls = list(re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text))
    assert len(calls) == 1, f"{path}: {len(calls)} Plotly.newPlot calls"
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(text, calls[0].end())
    layout, _ = decoder.raw_decode(text, re.compile(r",\s*").match(text, end).end())
    return {"data": data, "layout": layout}


def array(a) -> np.ndarray:
    """A figure's array as floats (NaN for null): a JSON list, or plotly's base64 typed array."""
    if isinstance(a, dict) and "bdata" in a:
        import base64

        out = np.frombuffer(base64.b64decode(a["bdata"]), dtype=np.dtype(a["dtype"])).astype(float)
        shape = a.get("shape")
        return out.reshape([int(n) for n in str(shape).split(",")]) if shape else out
    return np.array([[np.nan if v is None else v for v in row] if isinstance(row, list) else
                     (np.nan if row is None else row) for row in a], dtype=float)


def traces(fig: dict, series: str | None = None, scale: str | None = None, part: str | None = None) -> list[dict]:
    """The figure's traces of a series ("train_loss"), scale ("log", "linear"; "" for either) and part."""
    return [t for t in fig["data"] if (series is None or t["meta"]["series"] == series)
            and (scale is None or t["meta"]["scale"] == scale) and (part is None or t["meta"]["part"] == part)]


def menus(fig: dict) -> dict:
    """The figure's button rows by name: "series", "scale"."""
    return {m["name"]: m for m in fig["layout"].get("updatemenus", [])}


def draw(paths, tmp_path, **kwargs) -> dict:
    """render() into tmp_path; {file name: the matplotlib Figure saved there}."""
    figures = {}
    render(paths, tmp_path, figures=figures, **kwargs)
    return {path.name: fig for path, fig in figures.items()}


def legend_texts(fig) -> list[str]:
    """The entries of every legend of a figure: the figure's and each axes'."""
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def marks(fig, label: str) -> list[tuple]:
    """(x, y[, z]) of every marker line labelled `label`, in any axes of the figure."""
    found = []
    for ax in fig.axes:
        for line in ax.lines:
            if line.get_label() == label:
                data = line.get_data_3d() if hasattr(line, "get_data_3d") else line.get_data()
                found += list(zip(*(np.asarray(d, dtype=float) for d in data)))
    return found


# Put first in a copy of the page: reports on the console, as "PAGECHECK <what> <json>", every
# error, the resources the page loaded, and what the page shows after each click on its buttons
# (every split and value, each with its scales).
PAGE_CHECK = """<script>
(function () {
  function report(what, data) { console.log("PAGECHECK " + what + " " + JSON.stringify(data)); }
  var error = console.error;
  console.error = function () {
    report("error", [].join.call(arguments, " "));
    return error.apply(console, arguments);
  };
  window.addEventListener("error", function (e) { report("error", "uncaught " + e.message); });
  window.addEventListener("load", function () {
    report("resources", performance.getEntriesByType("resource").map(function (r) { return r.name; }));
    var gd = document.querySelector(".js-plotly-plot");
    if (!gd || !gd.data) { report("error", "no plot"); return; }
    function state(click) {
      report("state", {click: click, title: gd.layout.title.text, scene: gd.layout.scene.xaxis.visible !== false,
        shown: gd.data.filter(function (t) { return t.visible !== false; }).map(function (t) { return t.meta; }),
        menus: gd.layout.updatemenus.map(function (m) { return {active: m.active, visible: m.visible !== false}; })});
    }
    function click(label) {
      var found = [].filter.call(document.querySelectorAll("g.updatemenu-button"),
                                 function (b) { return b.textContent === label; });
      if (found.length !== 1) { report("error", found.length + " buttons " + label); return; }
      found[0].dispatchEvent(new MouseEvent("click", {bubbles: true}));
    }
    var steps = [];
    gd.layout.meta.series.forEach(function (s) {
      steps.push(s.label);
      if (s.scales.length > 1) s.scales.slice().reverse().forEach(function (scale) { steps.push(scale + " scale"); });
    });
    state(null);
    (function next(i) {
      if (i >= steps.length) { report("done", steps.length); return; }
      click(steps[i]);
      setTimeout(function () { state(steps[i]); next(i + 1); }, 100);
    })(0);
  });
})();
</script>"""


# What the `hessian` verb writes (hessmap.py), by hand: the maps on the paraboloid's grid, their
# ratio |min/max| crossing the paper's 0.5 at the corners, and a spectrum at the centre.
EIG_SETTINGS = {"split": "train", "samples": 1000, "params": "all", "tol": 1e-3}


CENTRE = {"top_eigenvalues": [2.9, 1.1, 0.7], "min_eigenvalue": -0.05, "ratio_min_max": 0.05 / 2.9, "trace": 5.2,
          "trace_stderr": 0.3, "parameters": 11274, "split": "train", "samples": 0, "params": "all",
          "hutchinson_samples": 100, "tol": 1e-3}


def eig_maps() -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.meshgrid(PX, PY)
    return 2 + X**2 + Y**2, 1.5 * X * Y - 0.01


def spectral_density() -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(-0.5, 3.5, 200)
    density = np.exp(-0.5 * (grid / 0.05) ** 2) + 1e-3 * np.exp(-0.5 * ((grid - 2.9) / 0.05) ** 2)
    return grid, density / np.trapezoid(density, grid)


def add_hessian(path, max_eig=None, min_eig=None, done=None, settings=None, centre=None, attrs=None):
    """Add to a surface file what `hessian` (maps) and `hessian --centre` (centre) store."""
    with h5py.File(path, "a") as f:
        if max_eig is not None:
            f["max_eig"] = np.asarray(max_eig, dtype=np.float64)
            f["min_eig"] = np.asarray(min_eig, dtype=np.float64)
            f["eig_done"] = np.asarray(done, dtype=np.uint8)
            for k, v in (settings or EIG_SETTINGS).items():
                f.attrs[f"hessian_{k}"] = v
        if centre is not None:
            g = f.create_group("hessian_centre")
            g["top_eigenvalues"] = np.asarray(centre["top_eigenvalues"], dtype=np.float64)
            g["density_grid"], g["density"] = spectral_density()
            for k, v in centre.items():
                if k != "top_eigenvalues":
                    g.attrs[k] = v
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return Path(path)


# The partial map: the first pass (every 4th point of each axis) and the centre, (0, 0).
PARTIAL_EIG = np.zeros((PY.size, PX.size), dtype=np.uint8)
PARTIAL_EIG[::4, ::4] = 1
PARTIAL_EIG[7, 10] = 1


def format_summary_of(path) -> str:
    from losslandscape.render.summary import format_summary

    return format_summary(summarize(path))


# The run's own path ends at the final model (0, 0); its last segment runs along the grid row
# y = 0, where the bilinear height on the surface is the linear interpolation along the row.
RUN_X = np.array([0.9, 0.75, 0.62, 0.6, 0.0])


RUN_Y = np.array([0.8, 0.4, 0.13, 0.0, 0.0])


RUN_ERR = np.array([0.06, 0.05, 0.03, 0.0155, 0.0])  # mean 0.0311: "3.1%"


# A second run projected on the plane; it starts outside the grid (x = -2.5 < -1.5).
ALSO_X = np.array([-2.5, -1.2, -0.6, -0.3])


ALSO_Y = np.array([1.0, 0.6, 0.2, -0.1])


ALSO_ERR = np.array([0.08, 0.06, 0.04, 0.02])  # mean 0.05: "5.0%"


PCA_SPEC = {"model": {"name": "resnet20", "checkpoint": "out/train/model_8.pt"},
            "directions": {"kind": "pca", "checkpoints": "out/train/model_*.pt", "also": ["out/seed1/ckpt_*.pt"]}}


def add_paths(path, runs=None, ratio=(0.872, 0.091), vlen=True):
    """Add what `trajectory` stores for a PCA surface: each run's x, y, error and checkpoint names
    (variable-length UTF-8 strings, or fixed-length bytes as parallel HDF5 writes them), its glob
    as the attribute `pattern`; the explained variance ratio of PC1 and PC2."""
    if runs is None:
        runs = [("out/train/model_*.pt", RUN_X, RUN_Y, RUN_ERR, [f"model_{2 * i}.pt" for i in range(5)]),
                ("out/seed1/ckpt_*.pt", ALSO_X, ALSO_Y, ALSO_ERR, [f"ckpt_{i}.pt" for i in range(4)])]
    with h5py.File(path, "a") as f:
        for k, (pattern, x, y, err, names) in enumerate(runs):
            g = f.require_group("trajectory" if k == 0 else f"trajectory/also/{k - 1}")
            g["x"], g["y"], g["error"] = (np.asarray(a, dtype=np.float64) for a in (x, y, err))
            if vlen:
                g.create_dataset("checkpoints", data=names, dtype=h5py.string_dtype("utf-8"))
            else:
                g["checkpoints"] = np.array([n.encode() for n in names])
            g.attrs["pattern"] = pattern
        if ratio is not None:
            f.attrs["explained_variance_ratio"] = np.asarray(ratio, dtype=np.float64)
    return Path(path)


def pca_loss() -> np.ndarray:
    return paraboloid() + 0.05  # 0.05 to 6.22: more than two decades, so drawn on a log scale


# The partial PCA surface: the coarse pass, every 4th point of each axis.
PCA_PARTIAL = np.zeros((PY.size, PX.size), dtype=np.uint8)
PCA_PARTIAL[::4, ::4] = 1


def artists(fig, gid: str) -> list:
    """The lines of a figure (any axes) with this gid."""
    return [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == gid]


# --- a private mount namespace for real tmpfs mounts (full disks, read-only file systems) ---

PAGE = 4096
CLEAN = {k: "" for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE",
                         "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")}


class Namespace:
    """A private mount namespace kept by a sleeping process; its files seen from here through
    /proc/<pid>/root."""

    def __init__(self):
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            pytest.fail("unshare and nsenter (util-linux) are needed to mount a tmpfs", pytrace=False)
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
        deadline = time.monotonic() + 10
        mine = os.readlink("/proc/self/ns/mnt")
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == mine:
            assert time.monotonic() < deadline, "unshare --mount did not start"
            time.sleep(0.01)

    def cmd(self, *args: str, cwd: Path | None = None) -> list[str]:
        # entering a mount namespace moves the working directory to its root: --wd sets it back
        return ["nsenter", "-t", str(self.holder.pid), "-m", *([f"--wd={cwd}"] if cwd else []), "--", *args]

    def sh(self, script: str) -> str:
        proc = subprocess.run(self.cmd("sh", "-c", script), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def mount(self, folder: Path, kib: int, ro: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.sh(f"mount -t tmpfs -o size={kib}k{',ro' if ro else ''} tmpfs {folder}")

    def fill(self, folder: Path, leave_pages: int = 0) -> None:
        """Fill the file system with zeros, then give back `leave_pages` pages."""
        self.sh(f"dd if=/dev/zero of={folder}/fill bs=4k 2>/dev/null; truncate -s -{leave_pages * PAGE} {folder}/fill")

    def free(self, folder: Path) -> int:
        return int(self.sh(f"df -k --output=avail {folder} | tail -1").strip()) * 1024

    def outside(self, path: Path) -> Path:
        return Path(f"/proc/{self.holder.pid}/root") / Path(path).relative_to("/")

    def run(self, args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args, cwd=cwd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **CLEAN, "OMP_NUM_THREADS": "1"})

    def popen(self, args: list[str], cwd: Path) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args, cwd=cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **CLEAN, "OMP_NUM_THREADS": "1"})

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


# --- random directions drawn by the documented scheme (directions.SCHEME), written out here

def drawn(name: str, shape: tuple, seed: int, axis: int) -> np.ndarray:
    """The documented scheme, written out here: SeedSequence([seed, axis, 4 words of SHA-256(name)])."""
    words = np.frombuffer(hashlib.sha256(name.encode()).digest()[:16], dtype="<u4").tolist()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, axis, *words])))
    return rng.standard_normal(shape, dtype=np.float32).astype(np.float64)


def filter_normalised(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    if d.ndim <= 1:
        return np.zeros_like(d)  # ignore = "biasbn"
    dn = np.linalg.norm(d.reshape(len(d), -1), axis=1)
    wn = np.linalg.norm(w.reshape(len(w), -1), axis=1)
    return d * (wn / dn).reshape(-1, *[1] * (d.ndim - 1))
