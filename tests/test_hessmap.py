"""The `hessian` verb: eigenvalue maps over a surface's grid and the spectrum at its centre,
checked against dense Hessians computed here, with real one-process and `mpirun` runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape import spec as specs

from helpers import BIN, launch, mpirun, rank_pids

TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 10))
    with torch.no_grad():  # running statistics that are not the identity
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net
'''
SAMPLES = 48


def tiny_module(folder: Path):
    """The TINY module written in `folder`, loaded from its file: not `import tiny`, which would
    give whichever module of that name this process imported first."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tiny_{abs(hash(str(folder)))}", folder / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "losslandscape"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def surface_file(tmp_path_factory) -> Path:
    """A 3x3 surface of a tiny CNN with BatchNorm (its weights saved as the checkpoint)."""
    d = tmp_path_factory.mktemp("hess")
    (d / "tiny.py").write_text(TINY)
    torch.save(tiny_module(d).build().state_dict(), d / "tiny.pt")
    (d / "job.toml").write_text(f'''
[model]
name = "tiny:build"
checkpoint = "{d / 'tiny.pt'}"
[data]
name = "digits"
splits = ["train"]
max_samples = 200
[directions]
dir_type = "states"
[grid]
x = "-1:1:3"
y = "-1:1:3"
[evaluation]
device = "cpu"
[output]
surface = "{d / 's.h5'}"
''')
    proc = cli("surface", d / "job.toml")
    assert proc.returncode == 0, proc.stderr
    return d / "s.h5"


def copy_of(surface_file: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "s.h5"
    target.write_bytes(surface_file.read_bytes())
    (tmp_path / "tiny.py").write_text(TINY)
    (tmp_path / "tiny.pt").write_bytes((surface_file.parent / "tiny.pt").read_bytes())
    return target


def dense_hessian(surface_path: Path, a: float = 0.0, b: float = 0.0, params: str = "all") -> np.ndarray:
    """The dense float64 Hessian of the mean loss at theta + a*dx + b*dy, parameters in model order."""
    model = tiny_module(surface_path.parent).build().double()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in torch.load(surface_path.parent / "tiny.pt").items()})
    with h5py.File(surface_path, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][...]).double() for k in f["directions/x"]}
        dy = {k: torch.from_numpy(f["directions/y"][k][...]).double() for k in f["directions/y"]}
    with torch.no_grad():  # states: parameters and BatchNorm statistics move
        for k, t in model.state_dict().items():
            if k in dx:
                t.add_(a * dx[k] + b * dy[k])
    model.eval()
    x, y = datasets.load_split(specs.from_dict({"data": {"max_samples": SAMPLES}}).data, "train")
    names = [n for n, p in model.named_parameters() if params == "all" or p.dim() > 1]
    base = dict(model.named_parameters())
    shapes = [base[n].shape for n in names]
    sizes = [base[n].numel() for n in names]

    def loss(flat):
        tensors = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        out = torch.func.functional_call(model, {**dict(model.named_buffers()), **base, **tensors}, (x.double(),))
        return F.cross_entropy(out, y)

    flat = torch.cat([base[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, flat).numpy()


def dense_eigenvalues(surface_path: Path, a: float, b: float, params: str = "all") -> np.ndarray:
    return np.linalg.eigvalsh(dense_hessian(surface_path, a, b, params))


def maps(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["max_eig"][...], f["min_eig"][...], f["eig_done"][...]


@pytest.fixture(scope="module")
def mapped(surface_file, tmp_path_factory) -> Path:
    """The surface with its maps from one process (`hessian --samples SAMPLES`), computed once;
    tests that change it work on a copy_of it."""
    path = copy_of(surface_file, tmp_path_factory.mktemp("mapped"))
    proc = cli("hessian", path, "--samples", SAMPLES)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
@pytest.mark.parametrize("params", ["all", "weights"])
def test_the_maps_equal_dense_hessians(surface_file, mapped, tmp_path, params):
    if params == "all":
        path = copy_of(mapped, tmp_path)
    else:
        path = copy_of(surface_file, tmp_path)
        proc = cli("hessian", path, "--samples", SAMPLES, "--params", params)
        assert proc.returncode == 0, proc.stderr
    hi, lo, done = maps(path)
    assert done.all()
    xs = ys = [-1.0, 0.0, 1.0]
    for j, i in [(1, 1), (0, 2), (2, 0)]:
        ev = dense_eigenvalues(path, xs[i], ys[j], params)
        radius = np.abs(ev).max()
        assert abs(hi[j, i] - ev[-1]) <= 1e-3 * radius and abs(lo[j, i] - ev[0]) <= 1e-3 * radius
    again = cli("hessian", path, "--samples", SAMPLES, "--params", params)
    assert again.returncode == 0 and "9 of 9 points done, 0 to compute" in again.stderr
    status = cli("status", path)
    assert "hessian maps     9 done        0 pending" in status.stdout


@pytest.mark.slow
def test_mpirun_equals_one_process(surface_file, mapped, tmp_path):
    one, many = mapped, copy_of(surface_file, tmp_path)
    proc = launch(mpirun(3) + [str(BIN / "losslandscape"), "hessian", str(many), "--samples", str(SAMPLES)])
    assert proc.returncode == 0, proc.stderr
    assert "2 workers; workers write through parallel HDF5" in proc.stderr
    for a, b in zip(maps(one), maps(many)):  # Lanczos to tol 1e-3: other thread counts round differently
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_centre_spectrum(surface_file, tmp_path):
    path = copy_of(surface_file, tmp_path)
    proc = cli("hessian", path, "--centre", "--top-k", "3", "--samples", SAMPLES, "--probes", "60", "--seed", "3",
               "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["trace_products"], result["trace_seed"], result["trace_deflated"]) == (60, 3, 30)
    assert result["trace_method"] == "Lanczos-deflated Hutchinson"
    ev = dense_eigenvalues(path, 0.0, 0.0)
    radius = np.abs(ev).max()
    np.testing.assert_allclose(result["top_eigenvalues"], ev[::-1][:3], atol=1e-3 * radius)
    assert abs(result["min_eigenvalue"] - ev[0]) <= 1e-3 * radius
    assert abs(result["trace"] - ev.sum()) <= 3 * result["trace_stderr"]
    with h5py.File(path, "r") as f:
        g = f["hessian_centre"]
        assert g["top_eigenvalues"].shape == (3,) and g["density"].shape == g["density_grid"].shape
        assert (g.attrs["trace_products"], g.attrs["trace_seed"]) == (60, 3)
    shown = cli("summary", path)
    assert "(Lanczos-deflated Hutchinson, 60 products, seed 3)" in shown.stdout, shown.stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # several seconds: the full suite runs it, `make check` does not
def test_bad_input_is_one_line_and_leaves_the_file(surface_file, mapped, tmp_path):
    path = copy_of(surface_file, tmp_path)
    before = sha(path)
    proc = cli("hessian", path, "--samples", "100000")
    assert proc.returncode == 1 and "--samples: 100000 is more than the 200 samples" in proc.stderr
    assert "Traceback" not in proc.stderr and sha(path) == before
    one_d = tmp_path / "line.h5"
    assert cli("surface", "--grid.x=-1:1:3", "--data.max_samples=20", f"--output.surface={one_d}").returncode == 0
    before = sha(one_d)
    proc = cli("hessian", one_d)
    assert proc.returncode == 1 and "is a 1-D surface; the eigenvalue maps need a 2-D surface" in proc.stderr
    assert sha(one_d) == before
    # other settings on maps that have points are refused
    path = copy_of(mapped, tmp_path / "mapped")
    before = sha(path)
    proc = cli("hessian", path, "--samples", "32")
    assert proc.returncode == 1 and "--samples: the eigenvalue maps of" in proc.stderr and sha(path) == before


@pytest.mark.slow  # Lanczos on a trained model, seconds
def test_hessian_directions_are_eigenvectors(surface_file, tmp_path):
    d = tmp_path
    (d / "tiny.py").write_text(TINY)
    (d / "tiny.pt").write_bytes((surface_file.parent / "tiny.pt").read_bytes())
    (d / "job.toml").write_text((surface_file.parent / "job.toml").read_text()
                                .replace(str(surface_file.parent), str(d))
                                .replace('dir_type = "states"', 'kind = "hessian"')
                                .replace("max_samples = 200", f"max_samples = {SAMPLES}"))
    proc = cli("surface", d / "job.toml")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(d / "s.h5", "r") as f:
        lams = f.attrs["hessian_eigenvalues"]
        scale = float(f.attrs["hessian_direction_scale"])
        dirs = [{k: torch.from_numpy(f[f"directions/{a}"][k][...]).double() for k in f[f"directions/{a}"]}
                for a in ("x", "y")]
        assert f["train_done"][...].all()
    ev = dense_eigenvalues(d / "s.h5", 0.0, 0.0)
    radius = np.abs(ev).max()
    assert abs(lams[0] - ev[-1]) <= 1e-3 * radius and abs(lams[1] - ev[0]) <= 1e-3 * radius
    H = dense_hessian(d / "s.h5")
    order = [n for n, _ in tiny_module(d).build().named_parameters()]  # the dense Hessian's order
    for lam, direction in zip(lams, dirs):
        v = torch.cat([direction[k].reshape(-1) for k in order]).numpy() / scale
        assert abs(np.linalg.norm(v) - 1) < 1e-5
        assert np.linalg.norm(H @ v - lam * v) <= 1e-3 * radius


@pytest.mark.slow
def test_a_killed_worker_then_a_rerun_equals_a_clean_run(surface_file, tmp_path):
    """7x7 maps under mpirun -n 3: SIGKILL one worker midway, rerun, compare with one clean process."""
    import signal
    import time


    d = tmp_path
    (d / "tiny.py").write_text(TINY)
    (d / "tiny.pt").write_bytes((surface_file.parent / "tiny.pt").read_bytes())
    (d / "job.toml").write_text((surface_file.parent / "job.toml").read_text()
                                .replace(str(surface_file.parent), str(d)).replace('"-1:1:3"', '"-1:1:7"'))
    assert cli("surface", d / "job.toml").returncode == 0
    clean = d / "clean.h5"
    clean.write_bytes((d / "s.h5").read_bytes())
    # env: Python's copy of the environment, without what an MPI singleton in this process set (launch)
    proc = subprocess.Popen(mpirun(3) + [str(BIN / "losslandscape"), "hessian", str(d / "s.h5"), "--samples",
                                         str(SAMPLES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with h5py.File(d / "s.h5", "r", locking=False) as f:
                if "eig_done" in f and f["eig_done"][...].sum() >= 5:
                    break
        except (OSError, KeyError):
            pass
    ranks = rank_pids(proc.pid)
    assert len(ranks) == 3, f"the maps ended before a worker could be killed: {proc.communicate()[1][-2000:]}"
    os.kill(ranks[-1], signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    partial = maps(d / "s.h5")[2].sum()
    assert 5 <= partial < 49
    again = launch(mpirun(3) + [str(BIN / "losslandscape"), "hessian", str(d / "s.h5"), "--samples",
                                str(SAMPLES)])
    assert again.returncode == 0, again.stderr
    assert f"{int(partial)} of 49 points done" in again.stderr
    assert cli("hessian", clean, "--samples", SAMPLES).returncode == 0
    for a, b in zip(maps(d / "s.h5"), maps(clean)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # needs the maps computed
def test_the_python_plot_draws_the_hessian_views_or_says_what_to_run(surface_file, mapped, tmp_path):
    import matplotlib

    import losslandscape as ll

    matplotlib.use("Agg")
    path = copy_of(surface_file, tmp_path)
    with pytest.raises(ll.UserError, match="has no Hessian maps; run `losslandscape hessian"):
        ll.plot(path, kind="ratio")
    path = copy_of(mapped, tmp_path / "mapped")
    fig = ll.plot(path, kind="ratio")
    assert "|" in " ".join(ax.get_title() for ax in fig.axes)
    assert len(ll.plot(path, kind="eigenvalues").axes) >= 2


@pytest.mark.slow
def test_a_bad_hessian_run_under_mpirun_is_one_line(surface_file, tmp_path):
    path = copy_of(surface_file, tmp_path)
    before = sha(path)
    proc = launch(mpirun(3) + [str(BIN / "losslandscape"), "hessian", str(path), "--samples", "100000"], timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("losslandscape: error:")]
    assert len(lines) == 1 and "--samples: 100000 is more than the 200 samples" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and sha(path) == before
