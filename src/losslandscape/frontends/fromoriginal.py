"""`losslandscape from-original -- ARGS`: the job spec of a command line of the original code.

The original loss-landscape code (Li et al., tomgoldstein/loss-landscape) computes a surface
with `plot_surface.py` and its argparse options. `translate` reads such a command line (its
arguments, optionally preceded by the launcher, e.g. `mpirun -n 4 python plot_surface.py`)
and returns the equivalent job spec as TOML, each line with a comment naming the argument it
came from. An argument that our spec cannot express, or that the original does not know, is a
one-line UserError and nothing is returned.

What the original does with its arguments (its plot_surface.py, net_plotter.py,
dataloader.py, evaluation.py), where that is not what our defaults do:
- directions: --dir_type defaults to weights (ours: states for an interpolation); --xnorm and
  --xignore default to nothing: the Gaussian is not normalised and 1-D entries (biases,
  BatchNorm) are the weights' own values (ours: filter and biasbn); the y axis has its own
  --ynorm/--yignore (ours: one norm and one ignore for both);
- --model_file2 makes x the line to that model (unnormalised, norm and ignore unused); with --y
  the y direction is then random, unless --same_dir (y = x) or --model_file3 (y to that model);
- random directions are always drawn after torch.manual_seed(123): --idx only names another
  direction file;
- --dir_file takes both directions from that file: the options that make directions are unused;
- it evaluates the train split only (its test pass is commented out);
- --data_split K draws one random 1/K of the train set (numpy seed 0), the same subset for
  every --split_idx (which only names the file); ours: contiguous part `part` of `parts`;
- its CIFAR-10 normalisation constants are (125.3, 123.0, 113.9)/255 and (63.0, 62.1,
  66.7)/255, not quite our standard ones: data.transform = "original";
- without --surf_file the surface is named after every option, next to --model_file; the
  spec keeps that name so that scripts which read the file find it;
- every MPI rank evaluates points; ours has a coordinator rank besides the workers;
- --dataset imagenet has no model loader or data loader in the original (it stops with an
  error); it becomes our imagefolder data set.
"""

from __future__ import annotations

import argparse
import json
import math
import os.path
import posixpath
import re
import shlex
from typing import Any

from losslandscape import spec as specs
from losslandscape.errors import UserError

SCRIPT = "plot_surface.py"
# the original's other scripts, and what does their work here
OTHER_SCRIPTS = {
    "plot_2D.py": "losslandscape render SURFACE --kind contour,filled,heatmap,surface3d",
    "plot_1D.py": "losslandscape render SURFACE --kind curve",
    "h52vtp.py": "losslandscape render SURFACE --kind vtp",
    "plot_trajectory.py": "losslandscape trajectory SPEC (directions.kind = \"pca\")",
    "plot_hessian_eigen.py": "losslandscape hessian SURFACE",
}

# plot_surface.py's options (name: default), as its argparse declares them
FLAGS = ("mpi", "cuda", "raw_data", "same_dir", "show", "log", "plot")
INTS = {"threads": 2, "ngpu": 1, "batch_size": 128, "data_split": 1, "split_idx": 0, "idx": 0}
FLOATS = {"loss_max": 5.0, "vmax": 10.0, "vmin": 0.1, "vlevel": 0.5}
TEXTS = {"dataset": "cifar10", "datapath": "cifar10/data", "trainloader": "", "testloader": "",
         "model": "resnet56", "model_folder": "", "model_file": "", "model_file2": "", "model_file3": "",
         "loss_name": "crossentropy", "dir_file": "", "dir_type": "weights", "x": "-1:1:51", "y": "",
         "xnorm": "", "ynorm": "", "xignore": "", "yignore": "", "surf_file": "", "proj_file": ""}
SHORT = {"mpi": "-m", "cuda": "-c", "loss_name": "-l"}
DEFAULTS: dict[str, Any] = {**{f: False for f in FLAGS}, **INTS, **FLOATS, **TEXTS}

NORMS = ("filter", "layer", "weight", "dfilter", "dlayer")  # normalize_direction's choices
CIFAR_FOLDER = "cifar-10-batches-py"  # what torchvision's CIFAR10(root) reads inside root
TABLES = ("model", "data", "directions", "grid", "evaluation", "output")


class _Parser(argparse.ArgumentParser):
    """plot_surface.py's argparse, whose mistakes are one-line UserErrors."""

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            word = unknown.group(1).split()[0]
            raise UserError(f"{word.split('=', 1)[0]}: not an argument of the original {SCRIPT}")
        raise UserError(f"{SCRIPT} arguments: {message}")


def _parser() -> _Parser:
    p = _Parser(prog=SCRIPT, add_help=False)  # allow_abbrev, as the original's
    for name in DEFAULTS:
        flags = [f"--{name}"] + ([SHORT[name]] if name in SHORT else [])
        if name in FLAGS:
            p.add_argument(*flags, action="store_true", default=argparse.SUPPRESS)
        else:
            kind = int if name in INTS else float if name in FLOATS else str
            p.add_argument(*flags, type=kind, default=argparse.SUPPRESS)
    return p


def _join_negative(args: list[str]) -> list[str]:
    """`--x -1:1:51` as `--x=-1:1:51` (argparse takes "-1:1:51" for an option)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if (word.startswith("--") and "=" not in word and i + 1 < len(args)
                and re.match(r"-[\d.]", args[i + 1])):
            out.append(f"{word}={args[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def split_launcher(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher words, plot_surface.py arguments): a pasted `mpirun -n 4 python plot_surface.py
    ARGS` line is taken as it is; the original's other scripts are refused with their equivalent."""
    for i, word in enumerate(argv):
        if word.startswith("-"):
            continue
        base = posixpath.basename(word)
        if base == SCRIPT:
            return argv[:i], argv[i + 1:]
        if base in OTHER_SCRIPTS:
            raise UserError(f"{base}: not a {SCRIPT} command line; its equivalent is `{OTHER_SCRIPTS[base]}` "
                            "(README: Coming from the original code)")
    return [], argv


def launcher_ranks(launcher: list[str]) -> int | None:
    """N of `mpirun -n N` / `-np N` / `srun -n N` in a pasted launcher, else None."""
    for i, word in enumerate(launcher):
        m = re.fullmatch(r"(?:-n|-np|--np|--ntasks)=?(\d*)", word)
        if m:
            value = m.group(1) or (launcher[i + 1] if i + 1 < len(launcher) else "")
            if value.isdigit():
                return int(value)
    return None


def _head(path: str) -> str:
    return path[:path.rfind("/")]  # the original's folder idiom (without a "/", the name less its last character)


def _tail(path: str) -> str:
    return path[path.rfind("/") + 1:]


def original_names(a: dict[str, Any]) -> tuple[str, str]:
    """(direction file, surface file) as plot_surface.py names them without --dir_file and
    --surf_file (net_plotter.name_direction_file, plot_surface.name_surface_file)."""
    if a["dir_file"]:
        dir_file = a["dir_file"]
    else:
        f1, f2, f3 = a["model_file"], a["model_file2"], a["model_file3"]
        if f2:
            if _head(f1) == _head(f2):
                name = f1 + "_" + _tail(f2)
            else:
                prefix = os.path.commonprefix([f1, f2])
                prefix = prefix[:prefix.rfind("/")]
                name = _head(f1) + "_" + _tail(f1) + "_" + f2[len(prefix) + 1:f2.rfind("/")] + "_" + _tail(f2)
        else:
            name = f1
        name += "_" + a["dir_type"]
        name += f"_xignore={a['xignore']}" if a["xignore"] else ""
        name += f"_xnorm={a['xnorm']}" if a["xnorm"] else ""
        if a["y"]:
            if f3:
                name += f3 if _head(f1) == _head(f3) else _head(f3) + "_" + _tail(f3)
            else:
                name += f"_yignore={a['yignore']}" if a["yignore"] else ""
                name += f"_ynorm={a['ynorm']}" if a["ynorm"] else ""
                name += "_same_dir" if a["same_dir"] else ""
        name += f"_idx={a['idx']}" if a["idx"] > 0 else ""
        dir_file = name + ".h5"
    (x0, x1, nx), y = _axis("x", a["x"]), a["y"] and _axis("y", a["y"])
    surf = dir_file + f"_[{x0},{x1},{nx}]"
    if y:
        surf += f"x[{y[0]},{y[1]},{y[2]}]"
    surf += "_rawdata" if a["raw_data"] else ""
    if a["data_split"] > 1:
        surf += f"_datasplit={a['data_split']}_splitidx={a['split_idx']}"
    return dir_file, surf + ".h5"


def _axis(name: str, text: str) -> tuple[float, float, int]:
    """The original's "min:max:num" (three numbers; num whole)."""
    try:
        lo, hi, num = (float(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--{name}={text}: expected min:max:num, e.g. -1:1:51") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or num != int(num) or num < 1:
        raise UserError(f"--{name}={text}: expected min:max:num with a whole num >= 1, e.g. -1:1:51")
    return lo, hi, int(num)


def _arg(name: str, a: dict[str, Any]) -> str:
    """How an argument reads in a comment: `--x=-1:1:51`, `--raw_data`."""
    return f"--{name}" if name in FLAGS else f"--{name}={a[name]}"


class _Toml:
    """The spec being written: values with their comments, table by table."""

    def __init__(self):
        self.lines: dict[str, list[str]] = {t: [] for t in TABLES}
        self.table: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
        self.header: list[str] = []

    def set(self, key: str, value: Any, comment: str) -> None:
        table, name = key.split(".")
        self.table[table][name] = value
        self.lines[table].append(f"{name} = {_value(value)}  # {_one_line(comment)}")

    def note(self, table: str, comment: str) -> None:
        self.lines[table].append(f"# {_one_line(comment)}")

    def text(self) -> str:
        out = [f"# {_one_line(c)}" if c else "#" for c in self.header]
        for table in TABLES:
            if self.lines[table]:
                out += ["", f"[{table}]", *self.lines[table]]
        return "\n".join(out) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # a TOML basic string


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def original_model_names() -> tuple[str, ...]:
    """The model names of the original code's CIFAR-10 loader (its `models` table)."""
    from losslandscape.inputs.models.original import ORIGINAL_NAMES

    return tuple(n.removeprefix("original_") for n in ORIGINAL_NAMES)


def translate(argv: list[str]) -> str:
    """The TOML job spec equivalent to a plot_surface.py command line (its arguments, or the whole
    pasted line with its launcher). UserError for an argument the spec cannot express."""
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    launcher, args = split_launcher(argv)
    if not args and not launcher:
        raise UserError(f"from-original: no arguments; give a {SCRIPT} command line after --, e.g. "
                        "losslandscape from-original -- --model resnet56 --x=-1:1:51")
    given = vars(_parser().parse_args(_join_negative(args)))
    a = {**DEFAULTS, **given}
    t = _Toml()
    t.header = ["losslandscape job spec from the original code's command line (losslandscape from-original):",
                "  " + shlex.join(argv),
                "Paths are as on that line: run from the folder where plot_surface.py ran."]
    _model(t, a, given)
    _data(t, a, given)
    _directions(t, a, given)
    _grid(t, a, given)
    _evaluation(t, a, given, launcher_ranks(launcher))
    _output(t, a, given)
    try:
        specs.from_dict(t.table)
    except UserError as exc:
        raise UserError(f"from-original: the translated spec is refused: {exc}") from None
    return t.text()


def _model(t: _Toml, a: dict, given: dict) -> None:
    names = original_model_names()
    if a["model"] not in names:
        raise UserError(f"--model={a['model']}: not a model of the original code (its names: {', '.join(names)})")
    t.set("model.name", f"original_{a['model']}", _arg("model", a) if "model" in given
          else "(no --model: the original's default, resnet56)")
    if a["model_file"]:
        t.set("model.checkpoint", a["model_file"], _arg("model_file", a))
    else:
        t.note("model", "(no --model_file: a fresh initialisation, as in the original, but ours is seeded otherwise)")
    if "model_folder" in given:
        t.note("model", f"{_arg('model_folder', a)}: unused by plot_surface.py, as here")


def _data(t: _Toml, a: dict, given: dict) -> None:
    where = _arg("datapath", a) if "datapath" in given else f"(no --datapath: the original's default, {a['datapath']})"
    if a["dataset"] == "cifar10":
        t.set("data.name", "cifar10", _arg("dataset", a) if "dataset" in given
              else "(no --dataset: the original's default, cifar10)")
        t.set("data.root", posixpath.join(a["datapath"], CIFAR_FOLDER),
              f"{where}: the original's torchvision root, relative to its code's folder; ours reads the "
              f"{CIFAR_FOLDER} folder in it")
        if a["raw_data"]:
            t.set("data.transform", "raw", "--raw_data: pixels in [0, 1], not normalised")
        else:
            t.set("data.transform", "original",
                  "(no --raw_data) the original's normalisation: mean (125.3, 123.0, 113.9)/255, "
                  "std (63.0, 62.1, 66.7)/255")
    elif a["dataset"] == "imagenet":
        t.set("data.name", "imagefolder", f"{_arg('dataset', a)}: the original has no loader for it (it stops with "
              "an error); ours reads one folder per split with one sub-folder per class")
        t.set("data.root", a["datapath"], where)
        if a["raw_data"]:
            t.set("data.transform", "raw", "--raw_data: pixels in [0, 1], not normalised")
    else:
        raise UserError(f"--dataset={a['dataset']}: not a data set of the original code (cifar10, imagenet)")
    t.set("data.splits", ["train"], "the original computes train_loss and train_acc only (its test pass "
          "is commented out); add \"test\" for both")
    if a["data_split"] < 1:
        raise UserError(f"--data_split={a['data_split']}: expected a number of parts >= 1")
    if not 0 <= a["split_idx"] < a["data_split"]:
        raise UserError(f"--split_idx={a['split_idx']}: expected 0 to --data_split - 1 = {a['data_split'] - 1}")
    if a["data_split"] > 1:
        t.set("data.parts", a["data_split"], _arg("data_split", a) + ": the original draws one random 1/K of the "
              "train set (numpy seed 0), the same one for every --split_idx; ours takes contiguous part `part`")
        t.set("data.part", a["split_idx"], _arg("split_idx", a) if "split_idx" in given else "(no --split_idx)")
    if a["trainloader"] and a["testloader"]:
        raise UserError(f"--trainloader={a['trainloader']}: a pickled DataLoader cannot be expressed; give its "
                        "data as data.name = \"package.module:factory\" (README: Your own model and data)")
    for name in ("trainloader", "testloader"):
        if a[name]:
            t.note("data", f"{_arg(name, a)}: unused without both --trainloader and --testloader, as in the original")
    if "threads" in given:
        t.note("data", f"{_arg('threads', a)}: the original's DataLoader workers; ours reads the data once into "
               "memory (evaluation.threads is CPU threads per process)")


def _directions(t: _Toml, a: dict, given: dict) -> None:
    for name in ("xnorm", "ynorm"):
        if a[name] and a[name] not in NORMS:
            raise UserError(f"{_arg(name, a)}: not a normalisation of the original code ({', '.join(NORMS)})")
    for name in ("xignore", "yignore"):
        if a[name] not in ("", "biasbn"):
            raise UserError(f"{_arg(name, a)}: expected biasbn (or no --{name})")
    if a["dir_type"] not in ("weights", "states"):
        raise UserError(f"{_arg('dir_type', a)}: expected weights or states")
    two = bool(a["y"])
    unused: list[str] = []  # arguments that make no difference to the original's directions here
    if a["dir_file"]:
        t.set("directions.kind", "file", _arg("dir_file", a))
        t.set("directions.file", a["dir_file"], _arg("dir_file", a) + ": the original's direction file (or ours)")
        unused = ["model_file2", "model_file3", "xnorm", "ynorm", "xignore", "yignore", "same_dir", "idx"]
    elif a["model_file2"]:
        t.set("directions.kind", "interpolate", _arg("model_file2", a) + ": x is the line from --model_file "
              "(x = 0) to this model (x = 1)")
        t.set("model.checkpoint2", a["model_file2"], _arg("model_file2", a))
        if two and a["same_dir"]:
            t.set("directions.same_dir", True, "--same_dir: y = x")
            unused = ["model_file3"]
        elif two and a["model_file3"]:
            t.set("model.checkpoint3", a["model_file3"], _arg("model_file3", a) + ": y is the line to this model")
        elif two:
            raise UserError(f"{_arg('y', a)} with --model_file2: the original's y direction is then random, and an "
                            "interpolation x cannot be paired with a random y here; give --model_file3 (the plane "
                            "through three models) or --same_dir")
        else:
            unused = ["model_file3", "same_dir"]
        unused += ["xnorm", "ynorm", "xignore", "yignore", "idx"]
    else:
        if two and a["model_file3"] and not a["same_dir"]:
            raise UserError(f"{_arg('model_file3', a)} without --model_file2: a random x with a y towards a third "
                            "model cannot be expressed; give --model_file2 too (the plane through three models)")
        t.set("directions.kind", "random", "(no --model_file2 or --dir_file) random Gaussian directions")
        if two and not a["same_dir"]:
            for axis in ("norm", "ignore"):
                if a["x" + axis] != a["y" + axis]:
                    shown = [f"--{c}{axis}={a[c + axis]}" if a[c + axis] else f"no --{c}{axis}" for c in "xy"]
                    raise UserError(f"{shown[0]} and {shown[1]}: the original treats x and y differently, but "
                                    f"directions.{axis} is one setting for both axes; give both the same")
        norm = a["xnorm"] or "none"
        t.set("directions.norm", norm, _arg("xnorm", a) if a["xnorm"] else
              "(no --xnorm) the original's default: not normalised, so x = 1 moves each weight by a unit "
              "Gaussian step (ours defaults to filter)")
        ignore = a["xignore"] or "none"
        t.set("directions.ignore", ignore, _arg("xignore", a) if a["xignore"] else
              "(no --xignore) the original's default: 1-D entries (biases, BatchNorm) are the weights' own "
              "values (ours defaults to biasbn)")
        if two and a["same_dir"]:
            t.set("directions.same_dir", True, "--same_dir: y = x")
        elif a["same_dir"]:
            unused.append("same_dir")
        unused.append("model_file3")  # without --y, or with --same_dir, the original does not read it
        if not two or a["same_dir"]:
            unused += ["ynorm", "yignore"]
        if "idx" in given:
            t.set("directions.seed", a["idx"], _arg("idx", a) + ": another draw per seed (the original always "
                  "seeds 123: its --idx only names another file)")
        else:
            t.note("directions", "seed 0 (the default): our random directions are not the original's draw")
    t.set("directions.dir_type", a["dir_type"], _arg("dir_type", a) if "dir_type" in given else
          "(no --dir_type) the original's default (ours: states for interpolate)")
    shown = [_arg(n, a) for n in unused if n in given]
    if shown:
        t.note("directions", f"{', '.join(shown)}: no effect on these directions, as in the original")


def _grid_axis(name: str, text: str) -> str:
    """Our "lo:hi:n" for the original's "min:max:num" (num may be written 51.0 there)."""
    from losslandscape.numerics.grid import parse_axis

    lo, hi, _ = text.split(":")
    ours = f"{lo}:{hi}:{_axis(name, text)[2]}"
    parse_axis(f"--{name}={text}", ours)  # ours needs min < max; the original does not check
    return ours


def _grid(t: _Toml, a: dict, given: dict) -> None:
    t.set("grid.x", _grid_axis("x", a["x"]), _arg("x", a) if "x" in given else "(no --x: the original's default)")
    if a["y"]:
        lo, hi, _ = _axis("y", a["y"])
        zero = "; the original refuses a y range with an end at 0 (it takes 0 as not given)" if 0 in (lo, hi) else ""
        t.set("grid.y", _grid_axis("y", a["y"]), _arg("y", a) + zero)
    else:
        t.note("grid", "(no --y) a 1-D curve along x, as in the original")


def _evaluation(t: _Toml, a: dict, given: dict, ranks: int | None) -> None:
    if a["loss_name"] not in ("crossentropy", "mse"):
        raise UserError(f"{_arg('loss_name', a)}: expected crossentropy or mse")
    loss = "cross_entropy" if a["loss_name"] == "crossentropy" else "mse"
    t.set("evaluation.loss", loss, _arg("loss_name", a) + (": softmax outputs against one-hot labels, as in the "
          "original" if loss == "mse" else "") if "loss_name" in given else "(no --loss_name: the original's default)")
    if "batch_size" in given:
        t.set("evaluation.batch_size", a["batch_size"], _arg("batch_size", a))
    if a["cuda"]:
        t.note("evaluation", "--cuda: device = \"auto\" (the default) puts each process on cuda:<node-local rank % "
               "GPUs>, as the original did")
    if a["ngpu"] > 1:
        t.note("evaluation", f"{_arg('ngpu', a)}: no DataParallel here; start one worker process per GPU instead")
    if a["mpi"] or ranks:
        n = ranks or "N"
        more = ranks + 1 if ranks else "N+1"
        t.header.append(f"{'--mpi' if a['mpi'] else 'launcher'}: mpirun -n {more} losslandscape surface job.toml "
                        f"(the original's {n} ranks all evaluate; ours has a coordinator besides {n} workers)")
    else:
        t.header.append("run: losslandscape surface job.toml (under mpirun -n N: distributed)")
    _plots(t, a, given)


def _plots(t: _Toml, a: dict, given: dict) -> None:
    plotting = [n for n in ("plot", "vmin", "vmax", "vlevel", "loss_max", "log", "show", "proj_file") if n in given]
    if not plotting:
        return
    surface = _surface(a)
    if a["y"]:
        levels = max(math.ceil((a["vmax"] - a["vmin"]) / a["vlevel"]), 1) if a["vlevel"] > 0 else 20
        command = (f"losslandscape render {shlex.quote(surface)} --kind contour,filled,heatmap,surface3d "
                   f"--vmin {a['vmin']:g} --vmax {a['vmax']:g} --levels {levels}")
    else:
        command = f"losslandscape render {shlex.quote(surface)} --kind curve" + (" --log" if a["log"] else "")
    t.header.append(f"{', '.join(_arg(n, a) for n in plotting)}: plot with {command}")
    if "show" in given:
        t.header.append("--show: render writes files (--format png|pdf|svg); open them, or --kind html")
    if "proj_file" in given:
        t.header.append(f"{_arg('proj_file', a)}: a trajectory is drawn on surfaces of `losslandscape trajectory` "
                        "(directions.kind = \"pca\")")


def _surface(a: dict) -> str:
    return a["surf_file"] or original_names(a)[1]


def _output(t: _Toml, a: dict, given: dict) -> None:
    if a["surf_file"]:
        t.set("output.surface", a["surf_file"], _arg("surf_file", a))
    else:
        t.set("output.surface", _surface(a), "(no --surf_file) the name the original gives it, so that scripts "
              "reading it find it; choose a shorter one freely")
