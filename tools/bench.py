"""`make bench`: grid points per second of our surface verb against two references.

- ours:  the `losslandscape surface` command as a user runs it (a subprocess,
         start-up, file creation and writing included);
- naive: the original code's way: per point, copy every weight from host
         tensors into the model, then iterate a DataLoader of 128-image batches;
- floor: plain forward passes of the same images through the same model in our
         batch size, no tool at all.
All three in one run, on the same machine, ResNet-20 on 2,000 CIFAR-shaped
images, a 5x5 grid, CPU fp32, 2 threads. Results go to bench.json.

Streamed data (`streamed`): the same 2,000 images stored as PNG files and decoded by a
Dataset each time they are read; our surface verb (data outer, points inner, a unit of 8
points: the data read once per unit) against the original code's way (a full loader pass per
point) and against the same images as in-memory tensors, 4x4 grid.

Memory (`memory`): peak resident memory of a surface run above an idle process with the same
imports, as a multiple of the weights' bytes, on language models built by their own factories
(random init, a few short sequences, CPU): a GPT-2-small-sized model in float32 with the
directions held, in bf16 with seeded directions held nowhere, and a Llama-shaped model of
about 1B parameters in bf16 the same way; and the seconds a point spends moving weights. And
one model over two ranks (`sharded`): the float32 GPT-2 with its directions held, under
mpirun -n 3 with evaluation.ranks_per_model = 2 (one group of two workers), each rank's own
peak against the one process's.

The coordinator (`coordinator`): the real MPI coordinator with 16, 64 and 256 stand-in workers
without a model (coordsim.py) under mpirun --oversubscribe: requests/s, its CPU per request,
the workers' waits and busy share for unit sizes 1, 4 and auto, and no point lost or doubled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape import spec as specs
from losslandscape.numerics.evaluate import batch_size_for
from losslandscape.inputs.models import build_model

MODEL, IMAGES, GRID, THREADS = "resnet20", 2000, "-1:1:5", 2
BATCH = batch_size_for(torch.device("cpu"))  # "our batch size": what the surface verb uses on a CPU


def _spec_table(work: Path, ckpt: Path, surface: str) -> dict:
    return {
        "model": {"name": MODEL, "checkpoint": str(ckpt)},
        "data": {"name": "synthetic", "max_samples": IMAGES, "splits": ["train"]},
        "grid": {"x": GRID, "y": GRID},
        "evaluation": {"device": "cpu", "threads": THREADS},
        "output": {"surface": str(work / surface)},
    }


def _write_toml(path: Path, table: dict) -> None:
    lines = []
    for section, values in table.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")


def bench_ours(work: Path, ckpt: Path, launcher: list[str] | None = None, surface: str = "ours.h5",
               extra: list[str] | None = None) -> dict:
    toml = work / f"{surface}.toml"
    _write_toml(toml, _spec_table(work, ckpt, surface))
    cmd = (launcher or []) + [sys.executable, "-m", "losslandscape", "surface", str(toml)] + (extra or [])
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{proc.stderr}")
    with h5py.File(work / surface, "r") as f:
        points = int(f["train_done"][...].sum())
        seconds = f["point_seconds"][...]
    out = {"points_per_s": points / wall, "steady_points_per_s": points / float(np.nansum(seconds)),
           "wall_s": wall, "points": points}
    # under MPI, the coordinator logs how long handing out the whole grid took: the compute phase
    m = re.search(r"coordinator CPU use: ([\d.]+) s in ([\d.]+) s", proc.stderr)
    if m:
        out["compute_points_per_s"] = points / float(m.group(2))
        out["coordinator_cpu_percent"] = 100.0 * float(m.group(1)) / float(m.group(2))
    return out


def bench_floor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, points: int) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(points):
            total = torch.zeros((), dtype=torch.float64)
            for s in range(0, len(y), BATCH):
                total += F.cross_entropy(model(x[s:s + BATCH]), y[s:s + BATCH], reduction="sum").double()
            total.item()
    return points / (time.perf_counter() - t0)


def bench_naive(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, points: int, seed: int = 0) -> float:
    """The original code's loop: host weights copied into the model per point, DataLoader batches of 128."""
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    host = [p.detach().clone() for p in model.parameters()]
    dx = [torch.randn(p.shape, generator=gen) * 0.01 for p in host]
    dy = [torch.randn(p.shape, generator=gen) * 0.01 for p in host]
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=False)
    coords = np.linspace(-1, 1, int(np.sqrt(points)))
    model.eval()
    t0 = time.perf_counter()
    n = 0
    for a in coords:
        for b in coords:
            for p, w, d1, d2 in zip(model.parameters(), host, dx, dy):
                p.data = w + a * d1 + b * d2
            total, correct, count = 0.0, 0, 0
            with torch.no_grad():
                for xb, yb in loader:
                    out = model(xb)
                    total += F.cross_entropy(out, yb).item() * len(yb)
                    correct += (out.argmax(1) == yb).sum().item()
                    count += len(yb)
            n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--mpi", choices=("auto", "off"), default="auto",
                        help="also time 1 and 2 MPI workers (needs mpirun)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the ~124M-parameter memory run (needs transformers, ~2 GB)")
    parser.add_argument("--coordinator", choices=("on", "off", "only"), default="on",
                        help="the MPI coordinator with 16, 64 and 256 stand-in workers (coordsim.py; needs mpirun; "
                        "minutes: 257 processes start); only: nothing else")
    args = parser.parse_args(argv)
    if args.coordinator == "only":
        results = {"coordinator": bench_coordinator()}
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="ll-bench-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        model = build_model(MODEL, in_channels=3)
        ckpt = work / "model.pt"
        torch.save({"state_dict": model.state_dict()}, ckpt)
        spec = specs.from_dict(_spec_table(work, ckpt, "x.h5"))
        x, y = datasets.load_split(spec.data, "train")
        points = 25
        results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS,
                                     "torch": torch.__version__, "cores": os.cpu_count()}}
        print(f"ResNet-20, {IMAGES} CIFAR-shaped images, 5x5 grid, CPU fp32, {THREADS} threads", flush=True)
        floor = bench_floor(model, x, y, points)
        ours = bench_ours(work, ckpt)
        naive = bench_naive(model, x, y, points)
        results[MODEL] = {"ours": ours["points_per_s"], "naive": naive, "floor": floor,
                          "ours_steady": ours["steady_points_per_s"], "ours_wall_s": ours["wall_s"],
                          "ours_over_floor": ours["points_per_s"] / floor,
                          "ours_over_naive": ours["points_per_s"] / naive}
        rows = [("ours (surface verb, whole command)", ours["points_per_s"]),
                ("ours, steady state (point timings)", ours["steady_points_per_s"]),
                ("naive (host copies + DataLoader 128)", naive),
                ("floor (plain forward passes)", floor)]
        if args.mpi == "auto":
            results["mpi"] = bench_mpi(work, ckpt)
            for k in ("1", "2"):
                if k in results["mpi"]:
                    rows.append((f"MPI, {k} worker(s) x 1 thread, compute phase", results["mpi"][k]))
                    rows.append((f"MPI, {k} worker(s) x 1 thread, whole command", results["mpi"][f"{k}_whole_command"]))
        results["hessian"] = bench_hessian()
        if args.coordinator == "on":
            results["coordinator"] = bench_coordinator()
        results["streamed"] = bench_streamed(work, ckpt, model)
        if not args.no_memory:
            results["memory"] = bench_memory(work)
    print(f"\n{'program':<42} {'points/s':>9}")
    for name, rate in rows:
        print(f"{name:<42} {rate:9.3f}")
    r = results[MODEL]
    print(f"\nours/floor = {r['ours_over_floor']:.2f} (target >= 0.9), "
          f"ours/naive = {r['ours_over_naive']:.2f} (target >= 1.5)")
    if "mpi" in results and "speedup_2_over_1" in results["mpi"]:
        mpi = results["mpi"]
        print(f"MPI: 2 workers / 1 worker = {mpi['speedup_2_over_1']:.2f} (target >= 1.8); coordinator CPU "
              f"{mpi['1_coordinator_cpu_percent']:.1f}% / {mpi['2_coordinator_cpu_percent']:.1f}% of a core")
    h = results["hessian"]
    print(f"Hessian (ResNet-20, 256 digit-sized images, 1 thread): forward {h['forward_per_s']:.1f}/s, "
          f"HVP {h['hvp_per_s']:.2f}/s: one HVP = {h['hvp_in_forward_passes']:.1f} plain forward passes "
          f"({h['hvp_in_evaluator_forward_passes']:.1f} of the evaluator's folded ones) as the maps compute it; "
          f"unfolded {h['unfolded_in_forward_passes']:.1f}, contiguous {h['contiguous_in_forward_passes']:.1f}, "
          f"afresh {h['fresh_double_backward_in_forward_passes']:.1f}, "
          f"forward-over-reverse {h['forward_over_reverse_in_forward_passes']:.1f}; a map point "
          f"(largest and smallest eigenvalue, tol {h['map_point_tol']:g}) {h['map_point_products']} products, "
          f"{h['map_point_s']:.1f} s")
    st = results["streamed"]
    print(f"Streamed PNGs (ResNet-20, 2,000 images, 4x4 grid, unit of 8): ours {st['ours']:.3f} points/s, "
          f"a loader pass per point {st['per_point_pass']:.3f}, in-memory tensors {st['in_memory']:.3f}: "
          f"ours/per-point pass = {st['ours_over_per_point_pass']:.2f} (goal >= 4), "
          f"streamed/in-memory = {st['streamed_over_in_memory']:.2f} (goal >= 0.7); reading the PNGs is "
          f"{100 * st['read_share']:.0f}% of a per-point pass ({st['read_pass_s']:.2f} s of {st['point_s']:.2f} s), "
          f"so one read per unit can gain at most {st['ceiling_over_per_point_pass']:.2f}x")
    if "memory" in results:
        m = results["memory"]
        for name, r in m["runs"].items():
            print(f"Memory, {name}: {r['parameters'] / 1e6:.0f}M parameters, {r['weights_mib']:.0f} MiB of weights; "
                  f"peak {r['peak_rss_mib']:.0f} MiB, {r['above_floor_over_weights']:.2f}x the weights above the "
                  f"{m['floor_rss_mib']:.0f} MiB of an idle process (goal <= 2.5 with none held); file "
                  f"{r['file_bytes'] / 1024:.0f} KiB; {r['seconds']:.0f} s")
        p = m["gpt2_bf16_point"]
        print(f"A point of the bf16 GPT-2: {p['move_s']:.1f} s moving the weights (directions drawn again), "
              f"{p['forward_s']:.1f} s of forward passes")
        sh = m["sharded"]
        def each(key):
            return ", ".join(f"rank {r} {x:.2f}x" for r, x in sorted(sh[key].items()))

        print(f"Sharded over 2 ranks ({sh['run']}), each worker above an idle process, in the whole model's "
              f"weights: peak before sharding (the model built whole) {each('before_sharding_above_floor_over_weights')}"
              f"; resident with its rows of the directions set {each('attached_above_floor_over_weights')}; peak "
              f"after sharding {each('after_sharding_above_floor_over_weights')} (one process's peak: "
              f"{m['runs'][sh['run']]['above_floor_over_weights']:.2f}x); shares held "
              f"{', '.join(f'{h:.3f}' for h in sh['held_shares'])}; {sh['seconds']:.0f} s")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


# UNIT:SECONDS:PER_WORKER: flat out (the coordinator's limit), then 2 s of work per worker in
# 50 ms points (unit 1 waits too often) and in 200 ms points, 10 a worker (unit 4 ends unevenly)
COORDINATOR_RUNS = ("1:0:40", "4:0:40", "auto:0:40", "1:0.05:40", "4:0.05:40", "auto:0.05:40",
                    "1:0.2:10", "4:0.2:10", "auto:0.2:10")


def bench_coordinator(sizes: tuple[int, ...] = (16, 64, 256), runs: tuple[str, ...] = COORDINATOR_RUNS) -> dict:
    """The real coordinator with N stand-in workers (coordsim.py) under mpirun --oversubscribe:
    each run of COORDINATOR_RUNS: requests/s, its CPU per request, the workers' waits and busy
    share, and 0 points lost or doubled."""
    import shutil

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return {}
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="ll-coordsim-") as tmp:
        for n in sizes:
            cmd = [mpirun, "--oversubscribe", "-n", str(n + 1), sys.executable, "-m", "tools.coordsim",
                   "--record", str(Path(tmp) / str(n)), "--out", str(Path(tmp) / f"{n}.json")]
            if os.geteuid() == 0:
                cmd.insert(1, "--allow-run-as-root")
            for run in runs:
                cmd += ["--run", run]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"coordsim with {n} workers failed: {proc.stderr[-2000:]}")
            out[str(n)] = {"whole_command_s": round(time.perf_counter() - t0, 1),
                           "runs": json.loads((Path(tmp) / f"{n}.json").read_text())}
            for r in out[str(n)]["runs"]:
                print(f"coordinator, {n:3d} workers, unit {r['unit_size']!s:>4}, {1e3 * r['point_seconds']:3.0f} ms a "
                      f"point: {r['requests_per_s']:8.1f} requests/s, {r['cpu_us_per_request']:6.1f} us CPU a request "
                      f"({100 * r['cpu_share']:4.1f}% of a core), wait median {r['wait_median_ms']:6.1f} ms, "
                      f"max {r['wait_max_ms']:6.1f} ms, workers busy {100 * r['worker_busy_share']:4.1f}%, "
                      f"lost {r['lost']}, twice {r['duplicated']}", flush=True)
    return out


def bench_hessian() -> dict:
    """Hessian-vector products per second against plain forward passes on the same data
    (hessian.benchmark: best of interleaved rounds, 1 thread)."""
    from losslandscape.numerics.hessian import benchmark

    torch.set_num_threads(1)
    ms = benchmark()
    point = bench_map_point()
    torch.set_num_threads(THREADS)
    out = {**point, "forward_per_s": 1000 / ms["forward"], "hvp_per_s": 1000 / ms["hvp_double_backward"],
           "hvp_in_evaluator_forward_passes": ms["hvp_double_backward"] / ms["forward_evaluator"]}
    for name, key in (("hvp_double_backward", "hvp_in_forward_passes"),
                      ("hvp_unfolded", "unfolded_in_forward_passes"),
                      ("hvp_contiguous", "contiguous_in_forward_passes"),
                      ("hvp_double_backward_fresh", "fresh_double_backward_in_forward_passes"),
                      ("hvp_forward_over_reverse", "forward_over_reverse_in_forward_passes")):
        out[key] = ms[name] / ms["forward"]
    return out


def bench_map_point(samples: int = 256, tol: float = 1e-3) -> dict:
    """What one Hessian map point costs: the largest and smallest eigenvalue by Lanczos at the
    maps' default tolerance, with respect to the weights a surface moves by default (biases and
    BatchNorm held), as the maps compute it (channels-last, BatchNorm folded, the graph kept);
    the products it took and its seconds, on hessian.benchmark's model and data, 1 thread."""
    from losslandscape.numerics.hessian import HessianOperator, extreme_eigenvalues

    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1).eval().to(memory_format=torch.channels_last)
    inputs, targets = torch.randn(samples, 1, 8, 8), torch.randint(0, 10, (samples,))
    start = time.perf_counter()
    op = HessianOperator(model, "weights", inputs, targets, batch_size=samples)
    lam_max, lam_min = extreme_eigenvalues(op, tol=tol)
    return {"map_point_products": op.matvecs, "map_point_s": time.perf_counter() - start,
            "map_point_lambda": [lam_max, lam_min], "map_point_samples": samples, "map_point_tol": tol}


def bench_mpi(work: Path, ckpt: Path) -> dict:
    """Points/s with 1 and 2 workers (a coordinator rank besides), 1 thread per worker.

    Rates are over the compute phase (the coordinator's hand-out loop), so that the
    start-up every run pays once (imports, model, data) does not hide the scaling;
    whole-command rates are reported beside them.
    """
    import shutil

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return {}
    out: dict = {}
    for workers in (1, 2):
        launcher = [mpirun, "--oversubscribe", "-n", str(workers + 1)]
        if os.geteuid() == 0:
            launcher.insert(1, "--allow-run-as-root")
        res = bench_ours(work, ckpt, launcher, surface=f"mpi{workers}.h5", extra=["--evaluation.threads=1"])
        out[str(workers)] = res["compute_points_per_s"]
        out[f"{workers}_whole_command"] = res["points_per_s"]
        out[f"{workers}_coordinator_cpu_percent"] = res["coordinator_cpu_percent"]
    out["speedup_2_over_1"] = out["2"] / out["1"]
    return out



PNG_DATASET = """
import numpy as np, torch
from pathlib import Path
from PIL import Image
from torch.utils.data import Dataset

ROOT = Path(__file__).parent / "png"
MEAN, STD = np.array({mean}, dtype=np.float32), np.array({std}, dtype=np.float32)


class Folder(Dataset):
    def __init__(self):
        self.files = sorted(ROOT.glob("*/*.png"))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        x = (np.asarray(Image.open(path), dtype=np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), int(path.parent.name)


def dataset(split):
    return Folder()


def tensors(split):
    folder = Folder()
    items = [folder[i] for i in range(len(folder))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
"""


def write_pngs(folder: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    """The images as 8-bit PNG files, one sub-folder per class (an image folder)."""
    from PIL import Image

    mean = torch.tensor(datasets.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(datasets.CIFAR_STD).view(1, 3, 1, 1)
    pixels = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, (img, label) in enumerate(zip(pixels, y.tolist())):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / str(label) / f"{i:05d}.png")


def bench_streamed(work: Path, ckpt: Path, model: torch.nn.Module, grid: str = "-1:1:4", unit: int = 8) -> dict:
    """Points/s on PNG files: ours streamed, a loader pass per point, in-memory tensors."""
    from torch.utils.data import DataLoader

    x, y = datasets.load_split(specs.from_dict({"data": {"name": "synthetic", "max_samples": IMAGES}}).data, "train")
    write_pngs(work / "png", x, y)
    (work / "pngdata.py").write_text(PNG_DATASET.format(mean=list(datasets.CIFAR_MEAN), std=list(datasets.CIFAR_STD)))
    extra = [f"--data.name=pngdata:dataset", f"--evaluation.unit_size={unit}", f"--grid.x={grid}", f"--grid.y={grid}"]
    ours = bench_ours(work, ckpt, surface="streamed.h5", extra=extra)
    extra[0] = "--data.name=pngdata:tensors"
    memory = bench_ours(work, ckpt, surface="inmemory.h5", extra=extra)
    sys.path.insert(0, str(work))
    import pngdata  # noqa: PLC0415 (written above)

    loader = DataLoader(pngdata.Folder(), batch_size=BATCH, shuffle=False)
    points = int(grid.rsplit(":", 1)[1]) ** 2
    gen = torch.Generator().manual_seed(0)
    host = [p.detach().clone() for p in model.parameters()]
    dx = [torch.randn(p.shape, generator=gen) * 0.01 for p in host]
    model.eval()
    t0 = time.perf_counter()
    for k in range(points):
        for p, w, d in zip(model.parameters(), host, dx):
            p.data = w + (k / points) * d
        total = 0.0
        with torch.no_grad():
            for xb, yb in loader:
                total += F.cross_entropy(model(xb), yb, reduction="sum").item()
    per_pass = points / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in loader:  # reading alone: what one read per unit instead of per point can save
        pass
    read_s = time.perf_counter() - t0
    return {"ours": ours["points_per_s"], "per_point_pass": per_pass, "in_memory": memory["points_per_s"],
            "read_pass_s": read_s, "point_s": 1.0 / per_pass, "read_share": read_s * per_pass,
            "ceiling_over_per_point_pass": 1.0 / (1.0 - read_s * per_pass * (1.0 - 1.0 / unit)),
            "ours_over_per_point_pass": ours["points_per_s"] / per_pass,
            "streamed_over_in_memory": ours["points_per_s"] / memory["points_per_s"], "unit_size": unit,
            "grid": f"{grid} x {grid}"}


LM_FACTORY = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape: 124M parameters, float32

def gpt2_bf16():
    torch.manual_seed(0)
    return GPT2LMHeadModel._from_config(GPT2Config(), dtype=torch.bfloat16)  # built in bf16

def llama_bf16():
    torch.manual_seed(0)  # Llama's shape at about 1B parameters (16 blocks of width 2048, untied head)
    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                         num_key_value_heads=16, vocab_size=32000, max_position_embeddings=64)
    return LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)

def data(split, vocab=50257, n=4, length=32):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    return [{"input_ids": ids[i:i + 2], "labels": ids[i:i + 2]} for i in range(0, n, 2)]

def short(split):  # a few short sequences: bf16 arithmetic is slow on a CPU without it
    return data(split, vocab=32000, n=2, length=8)

def idle():  # the floor: the interpreter, torch and the models' code, no model
    import transformers.models.gpt2.modeling_gpt2, transformers.models.llama.modeling_llama
"""

# (name, factory, data, the weights' bytes a parameter, extra options)
MEMORY_RUNS = (
    ("GPT-2 small, float32, directions held", "lmbench:gpt2", "lmbench:data", 4, []),
    ("GPT-2 small, bf16, seed, none held", "lmbench:gpt2_bf16", "lmbench:data", 2,
     ["--directions.store=seed", "--evaluation.hold_directions=false"]),
    ("Llama-shaped 1B, bf16, seed, none held", "lmbench:llama_bf16", "lmbench:short", 2,
     ["--directions.store=seed", "--evaluation.hold_directions=false"]),
)


def _peak_rss_mib(cmd: list[str], env: dict) -> tuple[float, str]:
    """The peak resident memory of a command (its own process), MiB, and its stderr."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest child's so far
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024.0, stderr


def bench_memory(work: Path) -> dict:
    """Peak resident memory of a 2x2 surface of language models, CPU, against their weights'
    bytes, above an idle process with the same imports; and for the bf16 GPT-2, the seconds a
    point spends moving its weights (directions drawn again) against its forward passes."""
    (work / "lmbench.py").write_text(LM_FACTORY)
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONPATH=str(work))
    floor, _ = _peak_rss_mib([sys.executable, "-c", "import torch, losslandscape.frontends.cli, lmbench; lmbench.idle()"],
                             env)
    out = {"floor_rss_mib": floor, "runs": {}}
    for k, (name, model, data, nbytes, extra) in enumerate(MEMORY_RUNS):
        path = work / f"lm{k}.h5"
        cmd = [sys.executable, "-m", "losslandscape", "surface", f"--model.name={model}", f"--data.name={data}",
               "--evaluation.loss=model", "--grid.x=-1:1:2", "--grid.y=-1:1:2", "--evaluation.device=cpu",
               f"--output.surface={path}", "--directions.ignore=biasbn", *extra]
        start = time.perf_counter()
        peak, err = _peak_rss_mib(cmd, env)
        params = int(re.search(r"of ([\d,]+) parameters", err).group(1).replace(",", ""))
        weights = params * nbytes / 2**20
        out["runs"][name] = {"parameters": params, "weights_mib": weights, "peak_rss_mib": peak,
                             "above_floor_over_weights": (peak - floor) / weights, "file_bytes": path.stat().st_size,
                             "seconds": time.perf_counter() - start}
    out["gpt2_bf16_point"] = _move_and_forward(work)
    out["sharded"] = _sharded_peaks(work, env, floor)
    out["sharded_checkpoint"] = _sharded_peaks(work, env, floor, _gpt2_safetensors(work))
    # glibc keeps freed blocks below its (self-raising) mmap threshold: fixed, they go back at once
    out["sharded_checkpoint_mmap_threshold"] = _sharded_peaks(work, dict(env, MALLOC_MMAP_THRESHOLD_="131072"), floor,
                                                              work / "gpt2.safetensors", "ckpt-threshold")
    return out


def _gpt2_safetensors(work: Path) -> Path:
    """The float32 GPT-2's weights as a safetensors file (its tied head stored once)."""
    from safetensors.torch import save_model

    sys.path.insert(0, str(work))
    import lmbench  # noqa: PLC0415 (written by bench_memory)

    path = work / "gpt2.safetensors"
    save_model(lmbench.gpt2(), str(path))
    return path


RANK_PEAK = """
import os, re, resource, sys
from losslandscape.frontends.cli import main
from losslandscape.run import groups
from losslandscape.run.work import SurfaceWork

def hwm_kib(key="VmHWM"):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

shard, marks = groups.shard, {}

def measured(*args):  # the peak so far, then the peak is reset (Linux: clear_refs 5)
    shard(*args)
    marks["before"] = hwm_kib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def attached(self, *args, **kwargs):  # resident once the rank's rows of the directions are set
    attach(self, *args, **kwargs)
    marks["attached"] = hwm_kib("VmRSS")

groups.shard, attach, SurfaceWork.attach = measured, SurfaceWork.attach, attached
code = main(sys.argv[1:])
rank = os.environ.get("OMPI_COMM_WORLD_RANK", "?")
print(f"bench-peak rank {rank} {marks.get('before', 0)} {marks.get('attached', 0)} {hwm_kib()}",
      file=sys.stderr)
sys.exit(code)
"""


def _sharded_peaks(work: Path, env: dict, floor: float, checkpoint: Path | None = None, tag: str = "ckpt") -> dict:
    """Each rank's own peak resident memory (MiB) of the float32 GPT-2's 2x2 surface with its
    directions held, under mpirun -n 3 with ranks_per_model = 2, above `floor`, against its
    weights' bytes; the one process's peak of the same run is the first memory run's. Without
    a `checkpoint` every rank builds the model whole, then shards it; with one (safetensors),
    each builds it on the meta device and reads its rows. Rank 0 (the coordinator, which
    makes the directions) is reported too."""
    (work / "rankpeak.py").write_text(RANK_PEAK)
    name, model, data, nbytes, _ = MEMORY_RUNS[0]
    mpirun = [shutil.which("mpirun") or "mpirun", "--oversubscribe", "-n", "3"]
    if os.geteuid() == 0:
        mpirun.insert(1, "--allow-run-as-root")
    cmd = mpirun + [sys.executable, str(work / "rankpeak.py"), "surface", f"--model.name={model}",
                    f"--data.name={data}", "--evaluation.loss=model", "--grid.x=-1:1:2", "--grid.y=-1:1:2",
                    "--evaluation.device=cpu", "--evaluation.threads=1", f"--output.surface={work / 'sharded.h5'}",
                    "--directions.ignore=biasbn", "--evaluation.ranks_per_model=2",
                    *([f"--model.checkpoint={checkpoint}", f"--output.surface={work / tag}.h5"] if checkpoint else [])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    every = [(int(r), int(a) / 1024.0, int(b) / 1024.0, int(c) / 1024.0)
             for r, a, b, c in re.findall(r"bench-peak rank (\d+) (\d+) (\d+) (\d+)", proc.stderr)]
    found = [row for row in every if row[0] > 0]
    coordinator = next(c for r, _, _, c in every if r == 0)
    peaks = {r: a for r, a, _, _ in found}  # the workers' peaks before sharding: the model built whole
    held = {r: b for r, _, b, _ in found}  # resident once the rank's rows of the directions are set
    after = {r: c for r, _, _, c in found}  # the peak since the model was sharded
    params = int(re.search(r"of ([\d,]+) parameters", proc.stderr).group(1).replace(",", ""))
    weights = params * nbytes / 2**20
    shares = [int(a) / int(b) for a, b in re.findall(r"holds (\d+) of the model's (\d+) parameter values", proc.stderr)]
    return {"run": name, "checkpoint": bool(checkpoint), "ranks_per_model": 2, "weights_mib": weights,
            "coordinator_peak_rss_mib": coordinator,
            "coordinator_above_floor_over_weights": (coordinator - floor) / weights,
            "before_sharding_rss_mib": peaks,
            "before_sharding_above_floor_over_weights": {r: (p - floor) / weights for r, p in peaks.items()},
            "attached_rss_mib": held,
            "attached_above_floor_over_weights": {r: (p - floor) / weights for r, p in held.items()},
            "after_sharding_rss_mib": after,
            "after_sharding_above_floor_over_weights": {r: (p - floor) / weights for r, p in after.items()},
            "held_shares": shares, "seconds": time.perf_counter() - start}


def _move_and_forward(work: Path) -> dict:
    """Seconds of one move of the bf16 GPT-2's weights to (1, 1), both directions drawn again
    block by block, against the forward passes of the point's data, in this process."""
    from losslandscape.numerics import directions as dirs
    from losslandscape.numerics.weights import WeightMover

    sys.path.insert(0, str(work))
    import lmbench  # noqa: PLC0415 (written above)

    model = lmbench.gpt2_bf16().eval()
    mover = WeightMover({k: p for k, p in model.named_parameters() if p.dim() > 1})
    mover.stream_directions(lambda base: (dirs.SeededDirection(base, 0, 0, "filter", "biasbn"),
                                          dirs.SeededDirection(base, 0, 1, "filter", "biasbn")))
    start = time.perf_counter()
    mover.move_to(1.0, 1.0)
    move = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for batch in lmbench.data("train"):
            model(**batch)
    forward = time.perf_counter() - start
    return {"move_s": move, "forward_s": forward}


if __name__ == "__main__":
    sys.exit(main())
