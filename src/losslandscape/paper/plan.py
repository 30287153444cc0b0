"""The experiments of `make paper`, one job spec each, at three scales.

Every experiment is written down once, here, as a spec at a given scale. At the full scale
(CIFAR-10, the paper's epochs, batch sizes and grids) these specs are the files in
`jobs/paper/` (`write_specs` makes them; a test keeps them equal). The small and quick scales
run the same files with command-line overrides: exactly the fields whose value differs
between the scales (data, epochs, batch sizes, grid sizes, depths, paths), nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FULL_ROOT = "out/paper-cifar10"  # where the full-scale specs put their outputs
SPEC_DIR = "jobs/paper"


@dataclass(frozen=True)
class Scale:
    name: str
    about: str
    data: str
    max_samples: int  # training images per split; 0 = all
    eval_samples: int  # images per split a surface is evaluated on (a fixed, seeded subset); 0 = all
    epochs: int
    lr: float  # SGD's initial learning rate
    warmup_epochs: int  # its linear warm-up
    lr_steps: tuple[int, ...]
    batch: int  # the ResNets' batch size
    batch_small: int  # claim 1: small-batch and large-batch VGG-9
    batch_large: int
    path_save_every: int  # checkpoints of the trajectory's run
    depths: tuple[int, ...]  # claim 2: ResNet depths, with and without shortcuts
    widths: tuple[int, ...]  # claim 3: wide ResNet-56, k = 1 is ResNet-56
    hessian_depths: tuple[int, int]  # claim 4: the shallow and the deep no-shortcut network
    grid2d: str
    grid1d: str
    grid_interp: str
    grid_hessian: str
    hessian_samples: int
    hessian_tol: float
    grid_path: str  # claim 5: the trajectory's axes ("auto:N")
    # A smaller scale runs a subset of the full scale's experiments (the same models, fewer of
    # them): every spec it runs is a file of jobs/paper.


SCALES: dict[str, Scale] = {
    "full": Scale("full", "CIFAR-10, the paper's training schedule and grids (a cluster job)",
                  "cifar10", 0, 0, 300, 0.1, 1, (150, 225, 275), 128, 128, 8192, 10, (20, 56, 110), (1, 2, 4), (20, 56),
                  "-1:1:51", "-1:1:51", "-0.5:1.5:81", "-1:1:21", 1000, 1e-3, "auto:51"),
    # Sized for about an hour on 2 CPU cores: the wide ResNet-56 (k = 4) costs the most, in
    # training (about 24 s an epoch here) and in every surface point (4.4 s for all 1,437 images), so the
    # surfaces see a seeded 512 of them. With 23 minibatches an epoch, ResNet-56 at lr 0.1 diverges
    # in its first steps and ends at 65% accuracy; at 0.05 after a 2-epoch warm-up it reaches 99%.
    "small": Scale("small", "the 8x8 digits (all 1,437 training images, 12 epochs; surfaces on 512 of them), "
                   "grids of 13 x 13 (about an hour on 2 CPU cores)",
                   "digits", 0, 512, 12, 0.05, 2, (6, 9), 64, 16, 512, 1, (20, 56, 110), (1, 2, 4), (20, 56),
                   "-1:1:13", "-1:1:41", "-0.5:1.5:41", "-1:1:5", 32, 1e-2, "auto:13"),
    # The mechanics only (every verb, resume, mpirun, the report): no claim can be judged at this size.
    "quick": Scale("quick", "128 digits per split, 2 epochs, 3 x 3 grids (a few minutes; for tests)",
                   "digits", 128, 128, 2, 0.05, 1, (), 32, 16, 64, 1, (20, 56), (1, 2), (20, 56),
                   "-1:1:3", "-1:1:5", "-0.5:1.5:5", "-1:1:3", 4, 1e-1, "auto:3"),
}

WEIGHT_DECAY = 5e-4


@dataclass
class Experiment:
    """One step of the paper run: a verb, its spec (a TOML table) and extra command-line words."""
    file: str  # the spec's file name in jobs/paper
    verb: str  # train | surface | trajectory | hessian
    table: dict
    claim: int
    args: list[str] = field(default_factory=list)  # e.g. the hessian verb's --samples

    @property
    def name(self) -> str:
        return self.file.removesuffix(".toml")

    def output(self) -> str:
        """The file whose existence (train: the last checkpoint) or completion marks it done."""
        if self.verb == "train":
            t = self.table["train"]
            return f"{t['out_dir']}/model_{t['epochs']}.pt"
        return self.table["output"]["surface"]


def runs(scale: Scale) -> dict[str, dict]:
    """Training runs: name -> (model, batch size, weight decay, checkpoint spacing)."""
    out = {}
    for wd, tag in ((0.0, "wd0"), (WEIGHT_DECAY, "wd")):
        for batch, size in ((scale.batch_small, "sb"), (scale.batch_large, "lb")):
            out[f"vgg9-{size}-{tag}"] = {"model": "vgg9", "batch": batch, "wd": wd, "claim": 1}
    depths = sorted(set(scale.depths) | set(scale.hessian_depths) | ({56} if scale.widths else set()))
    for d in depths:
        for short in ("", "_noshort"):
            out[f"resnet{d}{short}"] = {"model": f"resnet{d}{short}", "batch": scale.batch, "wd": WEIGHT_DECAY,
                                        "claim": 2}
    for k in scale.widths:
        if k > 1:
            for short in ("", "_noshort"):
                out[f"wrn56_{k}{short}"] = {"model": f"wrn56_{k}{short}", "batch": scale.batch, "wd": WEIGHT_DECAY,
                                            "claim": 3}
    return out


PATH_RUN = "resnet20"  # claim 5: the run whose trajectory is analysed


def final(root: str, scale: Scale, run: str) -> str:
    return f"{root}/train/{run}/model_{scale.epochs}.pt"


def experiments(scale: Scale, root: str = FULL_ROOT) -> list[Experiment]:
    """Every step at `scale`, outputs under `root`, in the order they run."""
    data = {"name": scale.data, "root": "data/cifar-10-batches-py", "splits": ["train", "test"],
            "max_samples": scale.max_samples}
    steps: list[Experiment] = []
    for run, r in runs(scale).items():
        save_every = scale.path_save_every if run == PATH_RUN else scale.epochs
        steps.append(Experiment(f"train-{run}.toml", "train", {
            "model": {"name": r["model"]},
            "data": data,
            "train": {"epochs": scale.epochs, "batch_size": r["batch"], "lr": scale.lr, "momentum": 0.9,
                      "weight_decay": r["wd"], "lr_steps": list(scale.lr_steps), "warmup_epochs": scale.warmup_epochs,
                      "save_every": save_every,
                      "out_dir": f"{root}/train/{run}", "seed": 0},
        }, r["claim"]))

    def surface(name: str, model: str, checkpoint: str, directions: dict, grid: dict, splits: list[str], claim: int,
                verb: str = "surface", checkpoint2: str = "") -> Experiment:
        m = {"name": model, "checkpoint": checkpoint}
        if checkpoint2:
            m["checkpoint2"] = checkpoint2
        return Experiment(f"{name}.toml", verb, {
            "model": m, "data": {**data, "splits": splits, "max_samples": scale.eval_samples},
            "directions": directions, "grid": grid,
            "output": {"surface": f"{root}/{name}.h5"}}, claim)

    random = {"kind": "random", "dir_type": "weights", "norm": "filter", "ignore": "biasbn", "seed": 0}
    # claim 1: the line between the small- and the large-batch minimiser, and filter-normalised
    # 1-D curves around each
    for tag in ("wd0", "wd"):
        steps.append(surface(f"interp-vgg9-{tag}", "vgg9", final(root, scale, f"vgg9-sb-{tag}"),
                             {"kind": "interpolate", "dir_type": "states"}, {"x": scale.grid_interp},
                             ["train", "test"], 1, checkpoint2=final(root, scale, f"vgg9-lb-{tag}")))
    for run in [r for r in runs(scale) if r.startswith("vgg9")]:
        steps.append(surface(f"line-{run}", "vgg9", final(root, scale, run), random, {"x": scale.grid1d},
                             ["train", "test"], 1))
    # claims 2 and 3: filter-normalised 2-D surfaces of every ResNet
    plane = {"x": scale.grid2d, "y": scale.grid2d}
    for d in scale.depths:
        for short in ("", "_noshort"):
            run = f"resnet{d}{short}"
            steps.append(surface(f"surface-{run}", run, final(root, scale, run), random, plane, ["train"], 2))
    for k in scale.widths:
        for short in ("", "_noshort"):
            run = f"resnet56{short}" if k == 1 else f"wrn56_{k}{short}"
            if not any(s.file == f"surface-{run}.toml" for s in steps):
                steps.append(surface(f"surface-{run}", run, final(root, scale, run), random, plane, ["train"], 3))
    # claim 4: Hessian eigenvalue maps of the shallow and the deep no-shortcut network
    for d in scale.hessian_depths:
        run = f"resnet{d}_noshort"
        step = surface(f"hessmap-{run}", run, final(root, scale, run), random,
                       {"x": scale.grid_hessian, "y": scale.grid_hessian}, ["train"], 4)
        steps.append(step)
        steps.append(Experiment(step.file, "hessian", step.table, 4,
                                ["--samples", str(scale.hessian_samples), "--tol", str(scale.hessian_tol)]))
    # claim 5: the PCA plane of a training run's checkpoints and its path
    steps.append(surface(f"trajectory-{PATH_RUN}", PATH_RUN, final(root, scale, PATH_RUN),
                         {"kind": "pca", "dir_type": "weights", "ignore": "biasbn",
                          "checkpoints": f"{root}/train/{PATH_RUN}/model_*.pt"},
                         {"x": scale.grid_path, "y": scale.grid_path}, ["train"], 5, verb="trajectory"))
    return steps


def _flatten(table: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _text(value) -> str:
    """A value as the command line writes it (`--train.lr_steps=10,15`)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def overrides(full: Experiment, scaled: Experiment) -> list[str]:
    """The command-line overrides that turn the full-scale spec into the scaled one: every
    field whose value differs, and only those."""
    a, b = _flatten(full.table), _flatten(scaled.table)
    if a.keys() != b.keys():
        raise ValueError(f"{full.file}: the scales name different fields: {sorted(a.keys() ^ b.keys())}")
    return [f"--{k}={_text(b[k])}" for k in a if a[k] != b[k]]


def commands(scale: Scale, root: str) -> list[tuple[Experiment, list[str]]]:
    """Each step at `scale` as (experiment, the verb's argument list on jobs/paper's spec)."""
    full = {(e.file, e.verb): e for e in experiments(SCALES["full"])}
    out = []
    for e in experiments(scale, root):
        if (e.file, e.verb) not in full:
            raise ValueError(f"{e.file}: no full-scale spec (a scale may only change values)")
        f = full[(e.file, e.verb)]
        spec = f"{SPEC_DIR}/{e.file}"
        if e.verb == "hessian":  # the verb reads the surface file, which knows its spec
            out.append((e, ["hessian", e.output(), *e.args]))
        else:
            out.append((e, [e.verb, spec, *overrides(f, e)]))
    return out


def toml_text(table: dict, comment: str) -> str:
    """A spec table as TOML (strings, numbers, booleans and flat lists are all it holds)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    for section, fields in table.items():
        lines += ["", f"[{section}]"] + [f"{k} = {value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


CLAIM_TITLES = {
    1: "filter normalisation matters (small vs large batch, with and without weight decay)",
    2: "skip connections keep deep networks convex-looking",
    3: "wider is flatter",
    4: "convex-looking means little negative curvature",
    5: "optimisation paths live in a tiny subspace",
}


def spec_files() -> dict[str, str]:
    """jobs/paper/<file> -> its text: every experiment's spec at full scale."""
    files = {}
    for e in experiments(SCALES["full"]):
        if e.verb == "hessian":
            continue  # the hessian verb runs on the hessmap surface's file
        extra = ""
        if any(x.file == e.file and x.verb == "hessian" for x in experiments(SCALES["full"])):
            h = next(x for x in experiments(SCALES["full"]) if x.file == e.file and x.verb == "hessian")
            extra = f"\nthen: losslandscape hessian {e.output()} {' '.join(h.args)}"
        comment = (f"make paper, claim {e.claim} ({CLAIM_TITLES[e.claim]}): {e.verb}, full scale (CIFAR-10).\n"
                   f"Run: losslandscape {e.verb} {SPEC_DIR}/{e.file}{extra}\n"
                   "Generated by losslandscape.paper.plan.write_specs; `make paper` runs it at a small scale "
                   "through overrides.")
        files[e.file] = toml_text(e.table, comment)
    return files


def write_specs(folder: str | Path = SPEC_DIR) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in spec_files().items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


if __name__ == "__main__":
    for p in write_specs():
        print(p)
