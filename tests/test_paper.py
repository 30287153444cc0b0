"""`losslandscape paper`: the experiment specs, the verdict rules on constructed surfaces whose
answer is known, and the quick scale end to end (real training, surfaces, Hessian maps and
trajectory; the report's figures and its page in headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from losslandscape.surfacefile import format as fileformat
from losslandscape import spec as specs
from losslandscape.paper import plan, verdicts
from helpers import ctrl_c_as_at_a_terminal, fake_venv, make, run_chromium

REPO = Path(__file__).resolve().parent.parent

# the fields a scale may change: the data, the schedule, the grids and where files go
SCALE_FIELDS = {"data.name", "data.max_samples", "train.epochs", "train.batch_size", "train.lr_steps",
                "train.lr", "train.warmup_epochs",
                "train.save_every", "train.out_dir", "model.checkpoint", "model.checkpoint2",
                "directions.checkpoints", "grid.x", "grid.y", "output.surface"}


# ----------------------------------------------------------------------------- the specs

def test_jobs_paper_holds_every_experiment_at_full_scale():
    files = plan.spec_files()
    on_disk = {p.name: p.read_text() for p in (REPO / "jobs" / "paper").glob("*.toml")}
    assert on_disk == files, "jobs/paper differs from plan.spec_files(): run python -m losslandscape.paper.plan"
    for name in files:
        spec = specs.load(REPO / "jobs" / "paper" / name)
        assert spec.data.name == "cifar10" and spec.data.max_samples == 0
        if name.startswith("train-"):
            assert spec.train.epochs == 300 and spec.train.lr_steps == [150, 225, 275]
        text = tomllib.loads(files[name])
        assert "output" in text or "train" in text


@pytest.mark.parametrize("scale", ["small", "quick"])
def test_a_smaller_scale_runs_the_same_specs_with_scale_overrides_only(scale, tmp_path):
    steps = plan.commands(plan.SCALES[scale], str(tmp_path))
    assert {e.claim for e, _ in steps} == {1, 2, 3, 4, 5}
    for e, argv in steps:
        if e.verb == "hessian":
            assert argv[:2] == ["hessian", e.output()] and "--samples" in argv
            continue
        assert argv[0] == e.verb and (REPO / argv[1]).is_file()
        keys = {a[2:].split("=", 1)[0] for a in argv[2:]}
        assert keys <= SCALE_FIELDS, keys - SCALE_FIELDS
        # the overrides applied to the committed file give exactly the scaled experiment
        overrides = dict(a[2:].split("=", 1) for a in argv[2:])
        spec = specs.load(REPO / argv[1], overrides)
        for key, value in plan._flatten(e.table).items():
            section, name = key.split(".")
            assert getattr(getattr(spec, section), name) == value, key


def test_the_small_scale_grids_and_models():
    small = plan.SCALES["small"]
    assert small.data == "digits" and small.depths == (20, 56, 110) and small.widths == (1, 2, 4)
    runs = plan.runs(small)
    assert {"resnet110_noshort", "wrn56_4", "vgg9-sb-wd0", "vgg9-lb-wd"} <= set(runs)
    assert runs["vgg9-sb-wd0"]["batch"] == 16 and runs["vgg9-lb-wd0"]["batch"] == 512
    assert runs["vgg9-sb-wd0"]["wd"] == 0 and runs["vgg9-sb-wd"]["wd"] == 5e-4


def test_the_full_scale_is_not_run_here_and_a_wrong_scale_is_one_line(tmp_path):
    for scale, expected in (("full", "--scale: full is the CIFAR-10 run of a cluster"),
                            ("huge", "--scale: 'huge' is not valid; expected one of full, small, quick")):
        proc = subprocess.run([sys.executable, "-m", "losslandscape", "paper", "--scale", scale, "--out",
                               str(tmp_path)], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
            f"losslandscape: error: {expected}"), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "paper", "--scale", "quick", "--out",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "no jobs/paper folder here" in proc.stderr


def test_make_paper_runs_the_paper_verb_with_its_scale_and_ranks(tmp_path):
    venv = fake_venv(tmp_path)
    make(venv, "install")
    assert f"{venv}/bin/losslandscape paper --scale small --mpi 1 --out out/paper" in make(venv, "-n", "paper")
    assert "paper --scale quick --mpi 3 --out out/paper" in make(venv, "-n", "paper", "PAPER_SCALE=quick",
                                                                  "PAPER_MPI=3")


# ----------------------------------------------------------------------------- the measures

def test_sharpness_is_the_curvature_of_a_parabola():
    x = np.linspace(-0.5, 1.5, 41)
    loss = 3.0 * (x - 1.0) ** 2 + 0.2 * (x - 1.0) + 0.1
    assert verdicts.sharpness(x, loss, 1.0) == pytest.approx(6.0)  # both sides: the linear term cancels
    # past the end of an interpolation the loss may be NaN: the computed side serves
    even = 3.0 * (x - 1.0) ** 2 + 0.1
    even[x > 1.0 + 1e-9] = np.nan
    assert verdicts.sharpness(x, even, 1.0) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="not computed"):
        verdicts.sharpness(x, np.full_like(x, np.nan), 0.0)


def test_sharpness_of_a_narrow_dip_between_high_walls_is_large():
    # the end of a real interpolation (VGG-9, large batch, at x = 1): the loss climbs towards the
    # end, then drops into a narrow minimum; beyond it nothing is computed
    x = np.array([0.8, 0.85, 0.9, 0.95, 1.0, 1.05])
    loss = np.array([4.28, 4.46, 4.63, 4.36, 0.0117, np.nan])
    assert verdicts.sharpness(x, loss, 1.0) == pytest.approx(2 * (4.36 - 0.0117) / 0.05 ** 2)
    flat = np.array([0.1, 0.08, 0.06, 0.05, 0.045, np.nan])
    assert verdicts.sharpness(x, flat, 1.0) < verdicts.sharpness(x, loss, 1.0)


def bowl(n: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = y = np.linspace(-1, 1, n)
    X, Y = np.meshgrid(x, y)
    return x, y, X ** 2 + 2 * Y ** 2


def egg_crate(n: int = 17) -> np.ndarray:
    """A bowl with bumps: local minima at known places."""
    x, y, z = bowl(n)
    X, Y = np.meshgrid(x, y)
    return z + 0.6 * np.cos(3 * np.pi * X) * np.cos(3 * np.pi * Y)


def brute_force_minima(z: np.ndarray) -> int:
    count = 0
    for j in range(1, z.shape[0] - 1):
        for i in range(1, z.shape[1] - 1):
            nb = [z[j + dj, i + di] for dj in (-1, 0, 1) for di in (-1, 0, 1) if dj or di]
            count += all(z[j, i] < v for v in nb)
    return count


def test_local_minima_counts_the_bumps():
    _, _, z = bowl()
    assert verdicts.local_minima(z) == 1
    crate = egg_crate()
    assert verdicts.local_minima(crate) == brute_force_minima(crate) > 3
    # a minimum whose neighbour is not computed is not counted
    holed = crate.copy()
    j, i = np.argwhere(verdicts_minima_mask(crate))[0] + 1
    holed[j, i + 1] = np.nan
    assert verdicts.local_minima(holed) == verdicts.local_minima(crate) - 1


def verdicts_minima_mask(z: np.ndarray) -> np.ndarray:
    mask = np.zeros((z.shape[0] - 2, z.shape[1] - 2), dtype=bool)
    for j in range(1, z.shape[0] - 1):
        for i in range(1, z.shape[1] - 1):
            mask[j - 1, i - 1] = all(z[j, i] < z[j + dj, i + di] for dj in (-1, 0, 1) for di in (-1, 0, 1)
                                     if dj or di)
    return mask


def test_basin_radius_of_a_bowl():
    x, y, z = bowl(21)  # z = x^2 + 2 y^2 on a step of 0.1
    r = verdicts.basin_radius(x, y, z, rise=0.5)
    # x: x^2 > 0.5 first at 0.8; y: 2 y^2 > 0.5 first at 0.6
    assert r["sides"] == pytest.approx({"x+": 0.8, "x-": 0.8, "y+": 0.6, "y-": 0.6})
    assert r["mean"] == pytest.approx(0.7) and r["censored"] == []
    flat = verdicts.basin_radius(x, y, 0.01 * z)
    assert flat["mean"] == pytest.approx(1.0) and sorted(flat["censored"]) == ["x+", "x-", "y+", "y-"]


def test_ratio_stats():
    x = y = np.linspace(-1, 1, 3)
    mx = np.full((3, 3), 2.0)
    mn = np.array([[-1.0, -0.5, -1.0], [-0.5, 0.2, -0.5], [-1.0, -0.5, -1.0]])
    r = verdicts.ratio_stats(mx, mn, x, y)
    assert r["centre"] == pytest.approx(0.1)
    assert r["mean"] == pytest.approx(np.mean(np.abs(mn) / 2))
    assert r["points"] == 9


# ----------------------------------------------------------------------------- the verdicts

def test_claim1_verdicts():
    # without weight decay the small-batch end looks flatter, with it the large-batch end; the
    # flatter-looking one has the larger norm; filter-normalised the small batch is flatter
    interp = {"sb-wd0": 1.0, "lb-wd0": 5.0, "sb-wd": 4.0, "lb-wd": 2.0}
    line = {"sb-wd0": 1.0, "lb-wd0": 3.0, "sb-wd": 1.0, "lb-wd": 3.0}
    norm = {"sb-wd0": 20.0, "lb-wd0": 10.0, "sb-wd": 5.0, "lb-wd": 8.0}
    err = {"sb-wd0": 5.0, "lb-wd0": 7.0, "sb-wd": 4.0, "lb-wd": 6.0}
    c = verdicts.claim1(interp, line, norm, err)
    assert c["held"] and [p["held"] for p in c["parts"]] == [True] * 4
    assert c["numbers"]["looks_flatter"] == {"wd0": "sb", "wd": "lb"}
    no_flip = verdicts.claim1({**interp, "sb-wd": 1.0}, line, norm, err)
    assert not no_flip["held"] and [p["held"] for p in no_flip["parts"]][0] is False
    sharper_small = verdicts.claim1(interp, {**line, "sb-wd": 5.0}, norm, err)
    assert not sharper_small["held"] and [p["held"] for p in sharper_small["parts"]] == [True, True, False, True]
    worse_small = verdicts.claim1(interp, line, norm, {**err, "sb-wd": 9.0})
    assert [p["held"] for p in worse_small["parts"]] == [True, True, True, False]
    norms_disagree = verdicts.claim1(interp, line, {**norm, "lb-wd": 1.0}, err)
    assert [p["held"] for p in norms_disagree["parts"]] == [True, False, True, True]


def test_claim2_verdict_from_constructed_surfaces():
    _, _, smooth = bowl()
    chaotic = egg_crate()
    minima = {"resnet20": verdicts.local_minima(smooth), "resnet110": verdicts.local_minima(smooth),
              "resnet20_noshort": verdicts.local_minima(smooth), "resnet110_noshort": verdicts.local_minima(chaotic)}
    assert verdicts.claim2(minima, [20, 110])["held"]
    # chaos without shortcuts that does not grow with depth
    flat = {**minima, "resnet20_noshort": minima["resnet110_noshort"]}
    c = verdicts.claim2(flat, [20, 110])
    assert not c["held"] and [p["held"] for p in c["parts"]] == [False, True]
    # shortcuts as chaotic as no shortcuts
    c = verdicts.claim2({**minima, "resnet110": minima["resnet110_noshort"]}, [20, 110])
    assert not c["held"] and [p["held"] for p in c["parts"]] == [True, False]


def test_claim3_verdict_from_constructed_surfaces():
    x, y, z = bowl(21)
    sharp, wide = verdicts.basin_radius(x, y, 4 * z), verdicts.basin_radius(x, y, z)
    radius = {"resnet56": sharp, "wrn56_4": wide, "resnet56_noshort": sharp, "wrn56_4_noshort": wide}
    acc = dict.fromkeys(radius, 90.0)
    assert verdicts.claim3(radius, [1, 4], acc)["held"]
    c = verdicts.claim3({**radius, "wrn56_4_noshort": sharp}, [1, 4], acc)
    assert not c["held"] and [p["held"] for p in c["parts"]] == [True, False]


def test_claim4_and_claim5_verdicts():
    x = y = np.linspace(-1, 1, 3)
    mx = np.full((3, 3), 2.0)
    convex = verdicts.ratio_stats(mx, np.full((3, 3), 0.1), x, y)
    mixed = np.array([[-1.6, -1.2, -1.6], [-1.2, 0.1, -1.2], [-1.6, -1.2, -1.6]])
    chaotic = verdicts.ratio_stats(mx, mixed, x, y)
    assert verdicts.claim4({"a": convex, "b": chaotic}, "a", "b")["held"]
    assert not verdicts.claim4({"a": chaotic, "b": convex}, "a", "b")["held"]
    assert verdicts.claim5([0.5, 0.2])["held"]
    c = verdicts.claim5([0.2, 0.1])
    assert not c["held"] and "30.0%" in c["parts"][0]["text"]


# ----------------------------------------------------------------------------- end to end

def non_blank_png(path: Path) -> bool:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    return img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.02


def paper(out: Path, *extra: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "losslandscape", "paper", "--scale", "quick", "--out", str(out),
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=ctrl_c_as_at_a_terminal, **kw)


@pytest.fixture(scope="module")
def quick_paper(tmp_path_factory):
    """The quick scale, interrupted once with Ctrl-C in its first Hessian map's surface, then run
    again to the end under `--mpi 2` (a coordinator and a worker: fewer processes a step)."""
    out = tmp_path_factory.mktemp("paper")
    first = paper(out)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if "claim 4: surface" in line:  # trained models and claim 1-3 surfaces exist now; interrupt a surface
            time.sleep(0.5)
            first.send_signal(signal.SIGINT)
            break
    rest = first.communicate(timeout=600)[0]
    interrupted = "".join(seen) + rest
    again = paper(out, "--mpi", "2")  # the rest under mpirun
    log = again.communicate(timeout=900)[0]
    return {"out": out, "interrupted": (first.returncode, interrupted), "log": (again.returncode, log)}


@pytest.mark.timeout(1800)  # whichever runs first sets up the quick run (about 3 min here)
@pytest.mark.slow
def test_quick_paper_runs_end_to_end_and_resumes(quick_paper):
    code, log = quick_paper["interrupted"]
    assert code in (3, 130), log[-2000:]
    assert "run the same command again" in log or "interrupted" in log
    code, log = quick_paper["log"]
    assert code == 0, log[-3000:]
    # the rerun reused every model trained before the interruption and went on
    assert len(re.findall(r"train train-\S+: reused", log)) == len(plan.runs(plan.SCALES["quick"]))
    assert re.search(r"claim 5: HELD|claim 5: did not hold", log)
    assert f"report: {quick_paper['out'] / 'index.html'}" in log
    assert re.search(r"under \S*mpirun -n 2\n", log), "the surfaces did not run under mpirun"
    # the surfaces finished before the interruption computed nothing again, each checked in the
    # paper's own process (no mpirun of 2 ranks for a file with nothing to compute)
    assert re.search(r"(\d+) of \1 points done \([^)]*\), 0 to compute", log), log[-3000:]
    steps = re.split(r"\n(?=\S+ INFO \[\d+/\d+\] )", log)
    finished = [s for s in steps if re.search(r"(\d+) of \1 points done \([^)]*\), 0 to compute", s)]
    assert finished and not [s for s in finished if "under " in s and "mpirun -n 2" in s], finished
    # and every surface and Hessian map is complete now
    import h5py

    files = sorted((quick_paper["out"] / "work-quick").glob("*.h5"))
    assert len(files) >= 10, files
    for path in files:
        with h5py.File(path, "r") as f:
            asked = fileformat.requested_splits(f)
            flags = [f"{split}_done" for split in asked] + [k for k in ("eig_done",) if k in f]
            assert flags and all(f[k][...].all() for k in flags), (path.name, flags)


@pytest.mark.timeout(1800)  # whichever runs first sets up the quick run (about 3 min here)
@pytest.mark.slow
def test_quick_paper_report(quick_paper):
    out = quick_paper["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["scale"] == "quick"
    assert [c["claim"] for c in results["claims"]] == [1, 2, 3, 4, 5]
    for c in results["claims"]:
        assert isinstance(c["held"], bool) and c["held"] == all(p["held"] for p in c["parts"])
        assert c["rule"] and c["numbers"]
        assert results["figures"][str(c["claim"])], c["claim"]
        for f in results["figures"][str(c["claim"])]:
            assert non_blank_png(out / f), f
    # the numbers are independent computations' numbers: a dense PCA of the trajectory's checkpoints
    import glob

    import h5py
    import torch
    from sklearn.decomposition import PCA

    with h5py.File(out / "work-quick" / "trajectory-resnet20.h5", "r") as f:
        traj = json.loads(f.attrs["spec"])
    final = torch.load(traj["model"]["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    names = [k for k, v in final.items() if v.dim() > 1]  # ignore = "biasbn": no 1-D tensors
    paths = sorted(glob.glob(traj["directions"]["checkpoints"]), key=lambda p: int(re.findall(r"\d+", p)[-1]))
    rows = []
    for p in paths:
        sd = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        rows.append(torch.cat([(sd[k] - final[k]).double().reshape(-1) for k in names]).numpy())
    evr = PCA(n_components=2).fit(np.stack(rows)).explained_variance_ratio_
    numbers = results["claims"][4]["numbers"]
    assert numbers["explained_variance_ratio"] == pytest.approx(evr, abs=1e-5)
    assert numbers["pc12"] == pytest.approx(evr.sum(), abs=1e-5)
    with h5py.File(out / "work-quick" / "surface-resnet56_noshort.h5", "r") as f:
        z = np.asarray(f["train_loss"])
    assert results["claims"][1]["numbers"]["local_minima"]["resnet56_noshort"] == brute_force_minima(z)
    assert results["compute_seconds"] > 0 and results["held"] == sum(c["held"] for c in results["claims"])


@pytest.mark.timeout(1800)  # whichever runs first sets up the quick run (about 3 min here)
@pytest.mark.slow
def test_quick_paper_page_opens_offline_in_chromium(quick_paper, chromium, tmp_path):  # noqa: F811
    out = quick_paper["out"]
    page = out / "index.html"
    text = page.read_text()
    assert "src='data:image/png;base64," in text
    assert not re.search(r"(src|href)=['\"]?(https?:|//|[\w./-]+\.(png|js|css))", text)  # nothing to fetch
    proc = run_chromium(chromium, page, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom")
    dom = proc.stdout
    assert dom.count("<section id=\"claim") == 5
    assert len(re.findall(r"<tr><td>\d</td>", dom)) == 5
    results = json.loads((out / "results.json").read_text())
    for c in results["claims"]:
        verdict = "held" if c["held"] else "did not hold"
        assert re.search(rf"<td>{c['claim']}</td><td>[^<]*</td><td class=\"\w+\">{verdict}</td>", dom), c["claim"]
    shot = tmp_path / "shot.png"
    run_chromium(chromium, page, tmp_path / "profile2", "--window-size=1100,1600", "--virtual-time-budget=5000",
                 f"--screenshot={shot}")
    assert non_blank_png(shot)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if re.search(r"Uncaught|Error|Failed to load|net::ERR", line)], console


@pytest.mark.slow
def test_a_failing_step_under_mpirun_ends_within_seconds_with_its_exit_code(tmp_path, monkeypatch):
    from losslandscape.paper.run import run_step

    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    code = run_step(["surface", "missing.toml"], 3)  # real mpirun, 3 ranks, each refusing the spec
    assert code == 1 and time.perf_counter() - started < 60
