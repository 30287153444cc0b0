"""The job spec: one dataclass per TOML table, the single source of truth.

Each field has a default and a one-line docstring under it; choices are
`Literal`s. The same dataclasses generate the command-line overrides
(`--grid.x=-1:1:51`), their help text and the validation, in the manner of
torchtitan's `JobConfig`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from losslandscape.inputs import userimport
from losslandscape.surfacefile.format import SPLITS  # noqa: F401 (the splits a spec may name)
from losslandscape.errors import UserError, readable_file

LOSS_NAMES = ("cross_entropy", "mse", "model")



@dataclass
class Model:
    name: str = "resnet20"
    """zoo name (see `losslandscape models`) or "package.module:factory"."""
    checkpoint: str = ""
    """trained weights (.pt/.t7); empty = the model's fresh initialisation."""
    checkpoint2: str = ""
    """second model's weights, the far end of `directions.kind = "interpolate"`."""
    trust_checkpoint: bool = False
    """allow checkpoints that need full unpickling (can run code: trusted files only)."""
    num_classes: int = 10
    """number of classes of the classifier."""
    checkpoint3: str = ""
    """third model's weights: with kind = "interpolate" and a y axis, the plane through three models (x = checkpoint2 - checkpoint, y = checkpoint3 - checkpoint; the original --model_file3)."""


@dataclass
class Data:
    name: str = "digits"
    """cifar10 | digits | synthetic | imagefolder | "package.module:factory" (called with the split name)."""
    root: str = "data/cifar-10-batches-py"
    """folder of the data set's files (cifar10: the python pickle batches; imagefolder: one folder per split, train and val or test, each with one sub-folder per class)."""
    splits: list[Literal["train", "test"]] = field(default_factory=lambda: ["train"])
    """which splits to evaluate: any of train, test."""
    max_samples: int = 0
    """0 = every sample; else a fixed, seeded subset of this many samples per split."""
    seed: int = 0
    """seed of the max_samples subset (and of the synthetic data)."""
    workers: int = 0
    """loader worker processes when the data is a Dataset (imagefolder, or a factory's) (0 = read in the evaluating process)."""
    transform: Literal["standard", "original", "raw"] = "standard"
    """cifar10 and imagefolder: standard = normalised (cifar10: our CIFAR-10 statistics; imagefolder: ImageNet's); original = the original code's CIFAR-10 constants, mean (125.3, 123.0, 113.9) / 255 and std (63.0, 62.1, 66.7) / 255 (imagefolder: as standard); raw = pixels in [0, 1] (the original --raw_data)."""
    image_size: int = 224
    """imagefolder: side of the centre crop, after the shorter side is resized to round(image_size * 8 / 7) (256 for 224), bilinear: torchvision's Resize + CenterCrop."""
    parts: int = 1
    """evaluate one of this many equal, contiguous parts of each split (after max_samples), len // parts items each, the rest in none (the original --data_split, which drew one random subset of the train split instead); 1 = the whole split."""
    part: int = 0
    """which part, 0 to parts - 1 (the original --split_idx)."""


@dataclass
class Directions:
    kind: Literal["random", "interpolate", "file", "hessian", "pca"] = "random"
    """random (Gaussian) | interpolate (checkpoint -> checkpoint2) | file (from an HDF5 file) | hessian (eigenvectors) | pca (of a trajectory)."""
    dir_type: Literal["auto", "weights", "states"] = "auto"
    """weights: parameters only; states: also BatchNorm running statistics; auto: states for interpolate, else weights."""
    norm: Literal["filter", "layer", "weight", "dfilter", "dlayer", "none"] = "filter"
    """normalisation of random directions; filter = Li et al.'s filter normalisation."""
    ignore: Literal["biasbn", "none"] = "biasbn"
    """biasbn: zero direction for every 1-D parameter (biases, BatchNorm)."""
    seed: int = 0
    """seed of the random directions."""
    orthogonal: bool = False
    """make the y direction orthogonal to the x direction (after normalisation)."""
    file: str = ""
    """HDF5 file to take directions from (kind = "file"): a surface file or an original direction file."""
    checkpoints: str = ""
    """kind = "pca": a glob of the training run's checkpoints, ordered by the number in the name."""
    also: list[str] = field(default_factory=list)
    """kind = "pca": globs of further runs to project onto the same plane."""
    which: Literal["maxmin", "top2"] = "maxmin"
    """kind = "hessian": eigenvectors of the largest and smallest eigenvalue (maxmin) or of the two largest."""
    include: list[str] = field(default_factory=list)
    """glob patterns on tensor names: only matching tensors move (empty = all)."""
    exclude: list[str] = field(default_factory=list)
    """glob patterns on tensor names: matching tensors stay fixed."""
    trainable_only: bool = False
    """move only parameters with requires_grad (LoRA adapters, an unfrozen head); with dir_type "states" the buffers (running statistics) have no requires_grad and stay fixed."""
    same_dir: bool = False
    """use the x direction on the y axis too (the original --same_dir)."""


@dataclass
class Grid:
    x: str = "-1:1:51"
    """x axis as "lo:hi:n" (n points from lo to hi, both included), or "auto"/"auto:N" (21 or N points, range chosen when the file is made)."""
    y: str = ""
    """y axis as "lo:hi:n" or "auto"/"auto:N"; empty = a 1-D curve along x."""
    auto_factor: float = 10.0
    """auto axes (random, hessian, file directions): step out from the centre until the loss is auto_factor times the centre's loss."""
    auto_samples: int = 2048
    """images of the first split in data.splits that the auto search evaluates, evenly spaced; 0 = all."""


@dataclass
class Evaluation:
    loss: str = "cross_entropy"
    """cross_entropy | mse | model (the model's own outputs.loss) | "package.module:function" (README: the loss contract)."""
    batch_size: int = 0
    """images per forward pass; 0 = 1024 on a GPU, 128 on a CPU (cache-sized batches are faster there)."""
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    """arithmetic of the forward passes (tf32/bf16 only change GPU runs)."""
    fold_batchnorm: bool = True
    """evaluate with each conv -> BatchNorm pair folded into one conv (same values, faster)."""
    device: str = "auto"
    """auto (cuda if present, else cpu) | cpu | cuda | cuda:N."""
    threads: int = 0
    """CPU threads per process; 0 = cores / processes on this node."""
    unit_size: int | Literal["auto"] = 4
    """grid points per work unit (and per flush of the surface file); auto = sized by the MPI coordinator from its number of workers, the points left and the seconds a point takes (4 in one process)."""


@dataclass
class Output:
    surface: str = "out/surface.h5"
    """the surface file to create or resume."""


@dataclass
class Train:
    epochs: int = 20
    """training epochs."""
    batch_size: int = 128
    """minibatch size (small-batch vs large-batch minimizers)."""
    lr: float = 0.1
    """initial learning rate of SGD."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 weight decay (0 for the paper's no-weight-decay minimizers)."""
    lr_steps: list[int] = field(default_factory=lambda: [10, 15])
    """epochs after which the learning rate is multiplied by lr_gamma."""
    lr_gamma: float = 0.1
    """learning-rate factor at each step."""
    warmup_epochs: int = 0
    """epochs over which the learning rate rises linearly, minibatch by minibatch, from lr / (their
    number of minibatches) to lr
    (Goyal et al. 2017; deep networks without it can diverge in their first steps)."""
    save_every: int = 5
    """write model_<epoch>.pt every this many epochs (and the last one)."""
    out_dir: str = "out/train"
    """folder for the checkpoints."""
    seed: int = 0
    """seed of the initialisation and the batch order."""


@dataclass
class Spec:
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    directions: Directions = field(default_factory=Directions)
    grid: Grid = field(default_factory=Grid)
    evaluation: Evaluation = field(default_factory=Evaluation)
    output: Output = field(default_factory=Output)
    train: Train = field(default_factory=Train)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


SECTIONS: dict[str, type] = typing.get_type_hints(Spec)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = nxt.value.value.strip()
    return docs


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        args = typing.get_args(tp)
        return f'"{args[0]}"' if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return "a list of " + _describe(typing.get_args(tp)[0])
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _coerce(key: str, value: Any, tp: Any, from_text: bool) -> Any:
    """Check (and, for command-line text, parse) one value against its annotation."""
    origin = typing.get_origin(tp)
    bad = UserError(f"{key}: {value!r} is not valid; expected {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):  # e.g. an integer or "auto": the first that fits
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option, from_text)
            except UserError:
                pass
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if from_text:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad
        return [_coerce(key, v, item, from_text) for v in value]
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if tp is bool:
        if from_text:
            lowered = str(value).lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise bad
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if from_text:
            try:
                return int(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if from_text:
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set(spec: Spec, key: str, value: Any, from_text: bool) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise UserError(f"spec: unknown table '{section}' (allowed: {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    hints = _hints(cls)
    if name not in hints:
        raise UserError(f"spec: unknown key '{key}' (allowed in [{section}]: {', '.join(hints)})")
    setattr(getattr(spec, section), name, _coerce(key, value, hints[name], from_text))


def _validate(spec: Spec) -> None:
    """Constraints beyond types; the grid axes are checked by grid.py."""
    from losslandscape.numerics.grid import parse_axis

    if spec.evaluation.unit_size != "auto" and spec.evaluation.unit_size < 1:
        raise UserError(f'evaluation.unit_size: {spec.evaluation.unit_size} is not valid; expected an integer >= 1 '
                        'or "auto"')
    positive = {
        "train.epochs": spec.train.epochs,
        "train.batch_size": spec.train.batch_size,
        "train.save_every": spec.train.save_every,
        "model.num_classes": spec.model.num_classes,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key}: {value} is not valid; expected an integer >= 1")
    for key, value in {"data.max_samples": spec.data.max_samples, "evaluation.batch_size": spec.evaluation.batch_size,
                       "evaluation.threads": spec.evaluation.threads,
                       "grid.auto_samples": spec.grid.auto_samples}.items():
        if value < 0:
            raise UserError(f"{key}: {value} is not valid; expected an integer >= 0")
    if not spec.data.splits:
        raise UserError("data.splits: empty; expected one or both of train, test")
    if len(set(spec.data.splits)) != len(spec.data.splits):
        raise UserError(f"data.splits: {spec.data.splits!r} names a split twice")
    from losslandscape.numerics.grid import auto_points, is_auto

    if not (math.isfinite(spec.grid.auto_factor) and spec.grid.auto_factor > 1):
        raise UserError(f"grid.auto_factor: {spec.grid.auto_factor} is not valid; expected a number > 1")
    for key, text in (("grid.x", spec.grid.x), ("grid.y", spec.grid.y)):
        if key == "grid.y" and not text:
            continue  # a 1-D curve
        if is_auto(text):
            # pca: the paths' extent (lifecycle.resolve_new_grid); random, hessian, file: the loss's growth (autorange.py)
            if spec.directions.kind == "interpolate":
                raise UserError(f'{key}: "auto" is not available for directions.kind = "interpolate" (the line '
                                'between two models); give "lo:hi:n", e.g. "-0.5:1.5:41"')
            auto_points(key, text)  # checks the form
        else:
            parse_axis(key, text)
    if spec.directions.kind == "interpolate":
        if not spec.model.checkpoint or not spec.model.checkpoint2:
            raise UserError('directions.kind: "interpolate" needs model.checkpoint and model.checkpoint2')
        if spec.grid.y and not (spec.model.checkpoint3 or spec.directions.same_dir):
            raise UserError('grid.y: "interpolate" is a 1-D line unless model.checkpoint3 gives a y direction (the '
                            'plane through three models); leave grid.y empty or set model.checkpoint3')
        if spec.model.checkpoint3 and not spec.grid.y:
            raise UserError('grid.y: empty; model.checkpoint3 spans the plane through three models (y = checkpoint3 - '
                            'checkpoint): give grid.y too, e.g. "-0.5:1.5:21"')
    elif spec.model.checkpoint3:
        raise UserError(f'model.checkpoint3: only with directions.kind = "interpolate" (the plane through three '
                        f'models), not {spec.directions.kind!r}; leave it empty')
    _validate_same_dir(spec)
    if spec.directions.dir_type == "auto":
        # the line between two models ends at the second model only if BatchNorm statistics move too
        spec.directions.dir_type = "states" if spec.directions.kind == "interpolate" else "weights"
    if spec.directions.kind == "hessian" and spec.directions.dir_type != "weights":
        raise UserError('directions.dir_type: "hessian" directions move the parameters only; use "weights"')
    if spec.directions.kind == "pca":
        if not spec.directions.checkpoints:
            raise UserError('directions.checkpoints: empty; kind = "pca" needs a glob of the run\'s checkpoints, '
                            'e.g. "out/run/model_*.pt"')
        if not spec.model.checkpoint:
            raise UserError('model.checkpoint: empty; kind = "pca" needs the final model (the centre of the plane)')
        if not spec.grid.y:
            raise UserError('grid.y: empty; the PCA plane is 2-D: give grid.y too')
    if spec.directions.kind == "file" and not spec.directions.file:
        raise UserError('directions.file: empty; kind = "file" needs the HDF5 file to read directions from')
    if spec.evaluation.loss not in LOSS_NAMES and ":" not in spec.evaluation.loss:
        raise UserError(f"evaluation.loss: {spec.evaluation.loss!r} is not valid; expected one of "
                        f"{', '.join(LOSS_NAMES)} or \"package.module:function\"")
    if spec.data.workers < 0:
        raise UserError(f"data.workers: {spec.data.workers} is not valid; expected an integer >= 0")
    if not spec.evaluation.device == "auto" and not (
            spec.evaluation.device == "cpu" or spec.evaluation.device.startswith("cuda")):
        raise UserError(f"evaluation.device: {spec.evaluation.device!r} is not valid; "
                        "expected auto, cpu, cuda or cuda:N")


def _validate_same_dir(spec: Spec) -> None:
    """directions.same_dir: y = x, where the spec has a y axis that x can stand for."""
    d = spec.directions
    if not d.same_dir:
        return
    if not spec.grid.y:
        raise UserError("directions.same_dir: a 1-D curve has no y axis; give grid.y or leave same_dir false")
    if d.orthogonal:
        raise UserError("directions.same_dir: with directions.orthogonal the y direction would be zero; "
                        "use one or the other")
    if spec.model.checkpoint3:
        raise UserError("directions.same_dir: model.checkpoint3 gives the y direction already; use one or the other")
    if d.kind == "pca":
        raise UserError('directions.same_dir: kind = "pca" takes y from the second principal component (the '
                        "paths are projected on it); leave same_dir false")


def from_dict(table: dict[str, Any], overrides: dict[str, str] | None = None) -> Spec:
    """A validated spec from parsed TOML plus dotted command-line overrides (as text)."""
    spec = Spec()
    for section, values in table.items():
        if section not in SECTIONS:
            raise UserError(f"spec: unknown table '[{section}]' (allowed: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise UserError(f"spec: '{section}' must be a table [{section}]")
        for name, value in values.items():
            _set(spec, f"{section}.{name}", value, from_text=False)
    for key, text in (overrides or {}).items():
        _set(spec, key, text, from_text=True)
    _validate(spec)
    return spec


def load(path: str | Path | None, overrides: dict[str, str] | None = None) -> Spec:
    """Read a TOML job spec (None: all defaults) and apply overrides."""
    table: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        readable_file(path, "spec", "a TOML job spec (omit it to take every default)")
        try:
            table = tomllib.loads(path.read_text())
            userimport.remember(path.parent)  # "mynet:build" beside the spec is found
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"spec: {path} is not valid TOML ({exc})") from None
    return from_dict(table, overrides)


def add_override_arguments(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """One `--section.field` option per spec field, with the field's docstring as help."""
    for section, cls in SECTIONS.items():
        if sections is not None and section not in sections:
            continue
        group = parser.add_argument_group(f"[{section}] overrides")
        docs = field_docs(cls)
        defaults = cls()
        for name, tp in _hints(cls).items():
            default = getattr(defaults, name)
            group.add_argument(
                f"--{section}.{name}", dest=f"override:{section}.{name}", metavar=_metavar(tp),
                default=argparse.SUPPRESS,
                help=f"{docs.get(name, '')} (default: {_show(default)})")


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(a).strip("{}") for a in typing.get_args(tp))
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin is list:
        return "A,B,..."
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT"}[tp]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "''"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if value == "" else str(value)


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    return {k.removeprefix("override:"): v for k, v in vars(args).items() if k.startswith("override:")}
