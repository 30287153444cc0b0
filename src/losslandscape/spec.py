"""The job spec and every verb's options: one dataclass a table, the single source of truth.

Each field has a default and a one-line docstring under it; choices are `Literal`s; bounds
are the fields' `metadata` (`AT_LEAST_0`, `AT_LEAST_1`). The same dataclasses generate the
command-line overrides (`--grid.x=-1:1:51`) and the verbs' own options (`hessian --top-k 3`,
`submit --tasks 4`), their help text, the Python interface's keywords
(`ll.compute_hessian(path, top_k=3)`) and the validation, in the manner of torchtitan's
`JobConfig`, so the two front ends cannot disagree. Validation is one check a table (`check`,
`check_options`), which changes nothing, then one explicit resolve step (`resolve`), which
fills in what "auto" means.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import re
import sys
import tomllib
import types
import typing
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from losslandscape.inputs import userimport
from losslandscape.surfacefile.format import HESSIAN_ATTRS, SPLITS  # noqa: F401 (the splits a spec may name)
from losslandscape.errors import UserError, option, readable_file

LOSS_NAMES = ("cross_entropy", "mse", "model")
AT_LEAST_0 = {"min": 0}  # a field's metadata: the smallest value it takes
AT_LEAST_1 = {"min": 1}
SEED = {"min": 0, "max": 2**64 - 1}  # what torch's and numpy's generators take
BATCH = {"max": 2**31}  # images per batch: beyond any memory, and torch indexes with 32 bits in places
PATH = {"path": True}  # a file or folder name (a glob too): check_path
INT_RANGE = (-(2**63), 2**63 - 1)  # every integer field fits a 64-bit integer (HDF5, numpy, torch)
SURFACE_NAME_ROOM = 80  # bytes added to output.surface's name beside it: ".<name>.lock.<host>.<pid>" and the like
MAX_TEXT = 4096  # characters of a text field (a path: the file system's own limits, check_path)


@dataclass
class Model:
    name: str = "resnet20"
    """zoo name (see `losslandscape models`) or "package.module:factory"."""
    checkpoint: str = field(default="", metadata=PATH)
    """trained weights (.pt/.t7/.safetensors, or a Hugging Face model folder); empty = the model's fresh initialisation."""
    checkpoint2: str = field(default="", metadata=PATH)
    """second model's weights, the far end of `directions.kind = "interpolate"`."""
    trust_checkpoint: bool = False
    """allow checkpoints that need full unpickling (can run code: trusted files only)."""
    num_classes: int = field(default=10, metadata=AT_LEAST_1)
    """number of classes of the classifier."""
    checkpoint3: str = field(default="", metadata=PATH)
    """third model's weights: with kind = "interpolate" and a y axis, the plane through three models (x = checkpoint2 - checkpoint, y = checkpoint3 - checkpoint; the original --model_file3)."""


@dataclass
class Data:
    name: str = "digits"
    """cifar10 | digits | synthetic | imagefolder | "package.module:factory" (called with the split name)."""
    root: str = field(default="data/cifar-10-batches-py", metadata=PATH)
    """folder of the data set's files (cifar10: the python pickle batches; imagefolder: one folder per split, train and val or test, each with one sub-folder per class)."""
    splits: list[Literal["train", "test"]] = field(default_factory=lambda: ["train"])
    """which splits to evaluate: any of train, test."""
    max_samples: int = field(default=0, metadata=AT_LEAST_0)
    """0 = every sample; else a fixed, seeded subset of this many samples per split."""
    seed: int = field(default=0, metadata=SEED)
    """seed of the max_samples subset (and of the synthetic data)."""
    workers: int = field(default=0, metadata=AT_LEAST_0)
    """loader worker processes when the data is a Dataset (imagefolder, or a factory's) (0 = read in the evaluating process)."""
    transform: Literal["standard", "original", "raw"] = "standard"
    """cifar10 and imagefolder: standard = normalised (cifar10: our CIFAR-10 statistics; imagefolder: ImageNet's); original = the original code's CIFAR-10 constants, mean (125.3, 123.0, 113.9) / 255 and std (63.0, 62.1, 66.7) / 255 (imagefolder: as standard); raw = pixels in [0, 1] (the original --raw_data)."""
    image_size: int = 224
    """imagefolder: side of the centre crop, after the shorter side is resized to round(image_size * 8 / 7) (256 for 224), bilinear: torchvision's Resize + CenterCrop."""
    parts: int = 1
    """evaluate one of this many equal, contiguous parts of each split (after max_samples), len // parts items each, the rest in none (the original --data_split, which drew one random subset of the train split instead); 1 = the whole split."""
    part: int = 0
    """which part, 0 to parts - 1 (the original --split_idx)."""
    input_keys: list[str] = field(default_factory=list)
    """dict batches: the keys passed to the model, as model(**{k: batch[k]}) (empty = every key, "labels" too); the targets are batch["labels"] either way."""


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
    seed: int = field(default=0, metadata=SEED)
    """seed of the random directions."""
    orthogonal: bool = False
    """make the y direction orthogonal to the x direction (after normalisation)."""
    file: str = field(default="", metadata=PATH)
    """HDF5 file to take directions from (kind = "file"): a surface file or an original direction file."""
    checkpoints: str = field(default="", metadata=PATH)
    """kind = "pca": a glob of the training run's checkpoints, ordered by the number in the name."""
    also: list[str] = field(default_factory=list, metadata=PATH)
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
    store: Literal["file", "seed"] = "file"
    """where the directions live: file (every tensor stored in the surface file) or seed (random directions only: the file records the seed, how they are drawn and normalised and a SHA-256 per tensor, and every process draws them again, tensor by tensor)."""


@dataclass
class Grid:
    x: str = "-1:1:51"
    """x axis as "lo:hi:n" (n points from lo to hi, both included), or "auto"/"auto:N" (21 or N points, range chosen when the file is made)."""
    y: str = ""
    """y axis as "lo:hi:n" or "auto"/"auto:N"; empty = a 1-D curve along x."""
    auto_factor: float = field(default=10.0, metadata={"expected": "a number > 1"})
    """auto axes (random, hessian, file directions): step out from the centre until the loss is auto_factor times the centre's loss."""
    auto_samples: int = field(default=2048, metadata=AT_LEAST_0)
    """images of the first split in data.splits that the auto search evaluates, evenly spaced; 0 = all."""


@dataclass
class Evaluation:
    loss: str = "cross_entropy"
    """cross_entropy | mse | model (the model's own outputs.loss) | "package.module:function" (README: the loss contract)."""
    batch_size: int = field(default=0, metadata={**AT_LEAST_0, **BATCH})
    """images per forward pass; 0 = 1024 on a GPU, 128 on a CPU (cache-sized batches are faster there)."""
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    """arithmetic of the forward passes (tf32/bf16 only change GPU runs)."""
    fold_batchnorm: bool = True
    """evaluate with each conv -> BatchNorm pair folded into one conv (same values, faster)."""
    device: str = "auto"
    """auto (cuda if present, else cpu) | cpu | cuda | cuda:N."""
    threads: int = field(default=0, metadata=AT_LEAST_0)
    """CPU threads per process; 0 = OMP_NUM_THREADS where it is set, else cores / processes on this node."""
    unit_size: int | Literal["auto"] = 4
    """grid points per work unit (and per flush of the surface file); auto = sized by the MPI coordinator from its number of workers, the points left and the seconds a point takes (4 in one process)."""
    cache_bytes: int = field(default=1 << 30, metadata=AT_LEAST_0)
    """streamed data (a DataLoader, a Dataset, data.name = "module:function"): host memory per process for a unit's batches, read once a unit; where they fit, the weights move once per point, else once per batch per point (data outer, points inner). 0 = never hold them."""
    hold_directions: bool = True
    """hold both directions in memory (fast); false (with directions.store = "seed"): hold none, each tensor's direction drawn again, block by block, while it moves at every point: memory near the weights' own (the live weights and their base), at the cost of drawing at every point."""
    ranks_per_model: int = field(default=1, metadata=AT_LEAST_1)
    """MPI worker ranks that share one model (under mpirun or srun): the workers form groups of this many, each holding one model sharded by rows over its ranks (torch.distributed FSDP2: gloo on the CPU, NCCL on GPUs), moving only its own rows and evaluating its share of each split's batches; the coordinator hands units to groups. With a model.checkpoint no rank builds the model whole: each builds it with its parameters on the meta device and reads its rows of the checkpoint. 1 = each worker holds a whole model."""


@dataclass
class Output:
    surface: str = field(default="out/surface.h5", metadata=PATH)
    """the surface file to create or resume."""


@dataclass
class Train:
    epochs: int = field(default=20, metadata=AT_LEAST_1)
    """training epochs."""
    batch_size: int = field(default=128, metadata={**AT_LEAST_1, **BATCH})
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
    save_every: int = field(default=5, metadata=AT_LEAST_1)
    """write model_<epoch>.pt every this many epochs (and the last one)."""
    out_dir: str = field(default="out/train", metadata=PATH)
    """folder for the checkpoints."""
    seed: int = field(default=0, metadata=SEED)
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
# the tables of a surface's spec; their order decides which table a bare keyword of the Python
# interface names (`seed=` is directions.seed); the command line lists them in SECTIONS' order
SURFACE_TABLES = ("directions", "grid", "evaluation", "data", "model", "output")
TRAIN_TABLES = ("model", "data", "evaluation", "train")


# --- the options of the verbs that take no spec ---------------------------------------------------
# `losslandscape hessian SURFACE --top-k 3` and `ll.compute_hessian(SURFACE, top_k=3)`: a field is
# a flag (its name with "-" for "_", or metadata["flag"]) and a keyword, and errors name it as the
# user gave it (errors.option).

@dataclass(frozen=True)
class Hessian:
    split: Literal["train", "test"] = "train"
    """the data split."""
    samples: int = field(default=0, metadata={**AT_LEAST_0, "metavar": "N"})
    """a fixed, seeded subset of N samples; 0 = all (or the surface's own subset)."""
    params: Literal["all", "weights"] = "all"
    """all trainable parameters the surface moves, or weights: its tensors of more than one dimension."""
    tol: float = field(default=1e-3, metadata=AT_LEAST_0)
    """Lanczos tolerance."""
    device: str = ""
    """override evaluation.device (auto, cpu, cuda, cuda:N); empty = the surface's own."""
    centre: bool = False
    """the spectrum at the centre (the trained model) instead of the maps."""
    top_k: int = field(default=5, metadata={**AT_LEAST_1, "metavar": "K"})
    """with centre: how many top eigenvalues."""
    trust_file: bool = False
    """import the file's model and data factories from every folder it names and honour its model.trust_checkpoint (runs code its maker chose: files you trust only; without it, only the file's own folder and the working directory are looked in)."""
    probes: int = field(default=100, metadata={"min": 4, "metavar": "N"})
    """with centre: Hessian-vector products for the trace, at least 4: half build a Lanczos basis whose part of the trace is exact, half are Hutchinson probes of the rest (recorded in the file)."""
    seed: int = field(default=0, metadata=SEED)
    """with centre: seed of the trace's random vectors (recorded in the file)."""

    def check(self) -> None:
        check_options(self)

    def attrs(self) -> dict:
        """The maps' settings as the surface file stores them."""
        return dict(zip(HESSIAN_ATTRS, (self.split, self.samples, self.params, self.tol)))


@dataclass
class Submit:
    tasks: int = field(metadata={**AT_LEAST_1, "metavar": "K"})
    """array tasks."""
    ranks_per_task: int = field(default=2, metadata={**AT_LEAST_1, "metavar": "R"})
    """MPI ranks per task: 1 coordinator + R-1 workers (1 = one process)."""
    gpus_per_task: int = field(default=0, metadata={"metavar": "G"})
    """0 or 1 GPU per worker rank; a task asks for G x (R-1) GPUs, none for the coordinator."""
    launcher: Literal["mpirun", "srun"] = "mpirun"
    """how a task starts its ranks."""
    partition: str = ""
    """sbatch --partition."""
    time: str = ""
    """sbatch --time of each array task, e.g. 2:00:00."""
    account: str = ""
    """sbatch --account."""
    sbatch_args: list[str] = field(default_factory=list, metadata={"flag": "--sbatch-arg", "metavar": "ARG"})
    """any other sbatch option, e.g. --sbatch-arg=--qos=low (repeatable)."""
    dry_run: bool = False
    """print the scripts, submit nothing."""

    def check(self) -> None:
        check_options(self)


@functools.cache
def _class_nodes(module: str) -> dict[str, ast.ClassDef]:
    """The top-level classes of a module's source, parsed once (finding each class's source
    with inspect parses the whole module again for every class)."""
    tree = ast.parse(inspect.getsource(sys.modules[module]))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of a dataclass."""
    node = _class_nodes(cls.__module__).get(cls.__qualname__)
    body = (node or ast.parse(inspect.getsource(cls)).body[0]).body
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
    bad = UserError(f"{key}: {shown(value)} is not valid; expected {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):  # e.g. an integer or "auto": the first that fits
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option, from_text)
            except UserError:
                pass
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if from_text and not isinstance(value, list):  # a repeatable flag gives a list already
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
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise bad from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluated once a class: the annotations are text (__future__)


def _set(spec: Spec, key: str, value: Any, from_text: bool) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise UserError(f"spec: unknown table '{section}' (allowed: {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    hints = _hints(cls)
    if name not in hints:
        raise UserError(f"spec: unknown key '{key}' (allowed in [{section}]: {', '.join(hints)})")
    setattr(getattr(spec, section), name, _coerce(key, value, hints[name], from_text))


def shown(value: Any, limit: int = 80) -> str:
    """`value` as an error line shows it: its repr, cut in the middle when long (a 10 MB value
    is not a 10 MB line), with its length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {len(hex(value)) - 2} hex digits"  # repr refuses beyond 4300 digits
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit // 2]!r}...{value[-limit // 4:]!r} ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text):,} characters)"


def _check_bounds(obj: Any, name: Callable[[str], str]) -> None:
    """The fields' bounds, in the order of the fields: an integer's metadata "min" and "max" (and
    a 64-bit integer's range for every one), a finite number (and its "min"; the field's own
    "expected" names what it takes where its table's check asks more), a text of at most
    MAX_TEXT characters, and the paths (metadata "path": check_path)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = name(f.name)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, int) and not isinstance(value, bool):
            lo = INT_RANGE[0] if low is None else low
            hi = INT_RANGE[1] if high is None else high
            if not lo <= value <= hi:
                expected = (f"an integer >= {low}" if value < lo and high is None and low is not None
                            else f"an integer from {_power(lo)} to {_power(hi)}")
                raise UserError(f"{key}: {shown(value)} is not valid; expected {expected}")
        elif isinstance(value, float):
            if not math.isfinite(value) or (low is not None and value < low):
                expected = f.metadata.get("expected") or ("a finite number" + (f" >= {low}" if low is not None else ""))
                raise UserError(f"{key}: {value} is not valid; expected {expected}")
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, str) and f.metadata.get("path"):
                check_path(text, key)
            elif isinstance(text, str) and len(text) > MAX_TEXT:
                raise UserError(f"{key}: {shown(text)} is too long; expected at most {MAX_TEXT} characters")


def _power(n: int) -> str:
    """A bound as it is easiest read: 2**64 - 1, -2**63, 2**31, 100."""
    for k in (31, 32, 63, 64):
        for form, value in ((f"2**{k}", 2**k), (f"2**{k} - 1", 2**k - 1), (f"-2**{k}", -(2**k))):
            if n == value:
                return form
    return str(n)


def path_limits(path: str) -> tuple[int, int]:
    """(PC_PATH_MAX, PC_NAME_MAX) of the file system where `path` is, or would be made."""
    folder = os.path.dirname(os.path.abspath(path)) if len(path) < 1 << 16 else os.getcwd()
    while True:
        try:
            return os.pathconf(folder, "PC_PATH_MAX"), os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError):
            if folder == os.path.dirname(folder):
                return 4096, 255  # POSIX systems' usual limits
            folder = os.path.dirname(folder)


def check_path(path: str, key: str) -> None:
    """One line naming `key` unless `path` is a name the file system can take: no NUL or other
    control character, encodable, at most PC_PATH_MAX - 1 bytes and each part at most PC_NAME_MAX
    (of the nearest existing folder). Every path field of the spec and render's --out pass here."""
    bad = next((i for i, c in enumerate(path) if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        what = "a NUL character" if path[bad] == "\0" else f"a control character ({path[bad]!r})"
        raise UserError(f"{key}: {shown(path)} contains {what} at position {bad}; expected a path")
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise UserError(f"{key}: {shown(path)} cannot be encoded as a file name; expected a path") from None
    path_max, name_max = path_limits(path)
    if len(raw) >= path_max:
        raise UserError(f"{key}: {shown(path)} is too long ({len(raw):,} bytes); expected a path of at most "
                        f"{path_max - 1} bytes")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > name_max:
        part = f" ({shown(os.fsdecode(longest), 40)})" if longest != raw.strip(b"/") else ""
        raise UserError(f"{key}: {shown(path)} has a name of {len(longest)} bytes{part}; expected at most {name_max} "
                        "bytes for each name in a path")


def _check_model(spec: Spec) -> None:
    if ":" in spec.model.name:
        userimport.check_name(spec.model.name, "model.name")
    if spec.model.checkpoint3 and spec.directions.kind != "interpolate":
        raise UserError(f'model.checkpoint3: only with directions.kind = "interpolate" (the plane through three '
                        f'models), not {spec.directions.kind!r}; leave it empty')


def _check_data(spec: Spec) -> None:
    if ":" in spec.data.name:
        userimport.check_name(spec.data.name, "data.name")
    if not spec.data.splits:
        raise UserError("data.splits: empty; expected one or both of train, test")
    if len(set(spec.data.splits)) != len(spec.data.splits):
        raise UserError(f"data.splits: {spec.data.splits!r} names a split twice")


# why a kind of direction cannot be drawn again from a seed (directions.store = "seed")
NOT_SEEDED = {"interpolate": "its direction is the difference of two checkpoints",
              "file": "its directions are read from another file",
              "hessian": "its directions are eigenvectors computed by Lanczos",
              "pca": "its directions are principal components of a training run"}


def _check_directions(spec: Spec) -> None:
    d = spec.directions
    if not spec.evaluation.hold_directions and d.store != "seed":
        raise UserError('evaluation.hold_directions: false needs directions.store = "seed" (directions stored in '
                        "the file would be read again at every point); set both, or leave it true")
    if d.store == "seed" and d.kind != "random":
        raise UserError(f'directions.store: "seed" is for random directions; kind = "{d.kind}" needs "file" '
                        f"({NOT_SEEDED[d.kind]}, not drawn from a seed)")
    if d.kind == "interpolate" and not (spec.model.checkpoint and spec.model.checkpoint2):
        raise UserError('directions.kind: "interpolate" needs model.checkpoint and model.checkpoint2')
    if d.kind == "hessian" and d.dir_type == "states":
        raise UserError('directions.dir_type: "hessian" directions move the parameters only; use "weights"')
    if d.kind == "pca":
        if not d.checkpoints:
            raise UserError('directions.checkpoints: empty; kind = "pca" needs a glob of the run\'s checkpoints, '
                            'e.g. "out/run/model_*.pt"')
        if not spec.model.checkpoint:
            raise UserError('model.checkpoint: empty; kind = "pca" needs the final model (the centre of the plane)')
    if d.kind == "file" and not d.file:
        raise UserError('directions.file: empty; kind = "file" needs the HDF5 file to read directions from')
    if d.same_dir:  # y = x, where the spec has a y axis that x can stand for
        if not spec.grid.y:
            raise UserError("directions.same_dir: a 1-D curve has no y axis; give grid.y or leave same_dir false")
        if d.orthogonal:
            raise UserError("directions.same_dir: with directions.orthogonal the y direction would be zero; "
                            "use one or the other")
        if spec.model.checkpoint3:
            raise UserError("directions.same_dir: model.checkpoint3 gives the y direction already; use one or the "
                            "other")
        if d.kind == "pca":
            raise UserError('directions.same_dir: kind = "pca" takes y from the second principal component (the '
                            "paths are projected on it); leave same_dir false")


def _check_grid(spec: Spec) -> None:
    """The axes' form (grid.py parses them) and what the directions allow."""
    from losslandscape.numerics.grid import auto_points, check_size, is_auto, parse_axis

    if not (math.isfinite(spec.grid.auto_factor) and spec.grid.auto_factor > 1):
        raise UserError(f"grid.auto_factor: {spec.grid.auto_factor} is not valid; expected a number > 1")
    shape = []
    for key, text in (("grid.x", spec.grid.x), ("grid.y", spec.grid.y)):
        if key == "grid.y" and not text:
            continue  # a 1-D curve
        if is_auto(text):
            # pca: the paths' extent (work.resolve_new_grid); random, hessian, file: the loss's growth (autorange.py)
            if spec.directions.kind == "interpolate":
                raise UserError(f'{key}: "auto" is not available for directions.kind = "interpolate" (the line '
                                'between two models); give "lo:hi:n", e.g. "-0.5:1.5:41"')
            shape.append(auto_points(key, text))  # checks the form
        else:
            shape.append(len(parse_axis(key, text)))  # its size is checked before the axis is made
    check_size(tuple(reversed(shape)), "grid.y" if len(shape) == 2 else "grid.x")
    if spec.directions.kind == "interpolate":
        if spec.grid.y and not (spec.model.checkpoint3 or spec.directions.same_dir):
            raise UserError('grid.y: "interpolate" is a 1-D line unless model.checkpoint3 gives a y direction (the '
                            'plane through three models); leave grid.y empty or set model.checkpoint3')
        if spec.model.checkpoint3 and not spec.grid.y:
            raise UserError('grid.y: empty; model.checkpoint3 spans the plane through three models (y = checkpoint3 - '
                            'checkpoint): give grid.y too, e.g. "-0.5:1.5:21"')
    if spec.directions.kind == "pca" and not spec.grid.y:
        raise UserError('grid.y: empty; the PCA plane is 2-D: give grid.y too')


def _check_evaluation(spec: Spec) -> None:
    e = spec.evaluation
    if e.unit_size != "auto" and e.unit_size < 1:
        raise UserError(f'evaluation.unit_size: {e.unit_size} is not valid; expected an integer >= 1 or "auto"')
    if e.loss not in LOSS_NAMES and ":" not in e.loss:
        raise UserError(f"evaluation.loss: {e.loss!r} is not valid; expected one of "
                        f"{', '.join(LOSS_NAMES)} or \"package.module:function\"")
    if e.loss not in LOSS_NAMES:
        userimport.check_name(e.loss, "evaluation.loss")
    _check_device("evaluation.device", e.device)
    if e.ranks_per_model > 1:
        if spec.directions.dir_type == "states":
            raise UserError(f"evaluation.ranks_per_model: {e.ranks_per_model} shards the parameters; "
                            'directions.dir_type = "states" also moves buffers, which are not sharded; use "weights"')
        if not e.hold_directions and spec.directions.norm in ("layer", "dlayer"):
            raise UserError(f"evaluation.ranks_per_model: {e.ranks_per_model} with hold_directions = false draws "
                            f"each rank's rows alone, and directions.norm = {spec.directions.norm!r} scales a "
                            'tensor by its whole norm; use norm = "filter", or hold_directions = true')


def _check_device(name: str, device: str) -> None:
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,6}", device)):
        raise UserError(f"{name}: {shown(device)} is not valid; expected auto, cpu, cuda or cuda:N")


def _check_output(spec: Spec) -> None:
    path = spec.output.surface
    if not path.strip():
        raise UserError(f"output.surface: {path!r} is empty; expected the surface file to create or resume, "
                        'e.g. "out/surface.h5"')
    if path.endswith("/") or Path(path).name in ("", ".", ".."):
        raise UserError(f"output.surface: {shown(path)} names a folder; expected the surface file to create or "
                        'resume, e.g. "out/surface.h5"')
    name, most = os.fsencode(Path(path).name), path_limits(path)[1] - SURFACE_NAME_ROOM
    if len(name) > most:
        raise UserError(f"output.surface: {shown(path)} has a file name of {len(name)} bytes; expected at most "
                        f"{most} (the names made beside it, its lock's temporary, its shards' folder, are up to "
                        f"{SURFACE_NAME_ROOM} bytes longer)")


_TABLE_CHECKS: dict[str, Callable[[Spec], None]] = {
    "model": _check_model, "data": _check_data, "directions": _check_directions, "grid": _check_grid,
    "evaluation": _check_evaluation, "output": _check_output}


def check(spec: Spec) -> None:
    """Every table's constraints beyond types, table by table; changes nothing. The grid's form
    comes before what the directions need, so that a bad axis is named first."""
    order = [s for s in SECTIONS if s != "directions"]
    order.insert(order.index("grid") + 1, "directions")
    for section in order:
        _check_bounds(getattr(spec, section), lambda name: f"{section}.{name}")
        _TABLE_CHECKS.get(section, lambda _: None)(spec)


def resolve(spec: Spec) -> Spec:
    """What "auto" means where the spec alone decides it (the grid's "auto" axes are resolved when
    the file is made: run/work.py). Changes `spec` and returns it."""
    if spec.directions.dir_type == "auto":
        # the line between two models ends at the second model only if BatchNorm statistics move too
        spec.directions.dir_type = "states" if spec.directions.kind == "interpolate" else "weights"
    return spec


def _check_hessian(opts: Hessian) -> None:
    if opts.device:
        _check_device(option("device"), opts.device)


def _check_submit(opts: Submit) -> None:
    if opts.gpus_per_task not in (0, 1):
        raise UserError(f"{option('gpus_per_task')}: {opts.gpus_per_task} is not valid; expected 0 or 1 "
                        "(a worker evaluates on one GPU: use more ranks for more GPUs)")
    for name in ("partition", "time", "account"):  # each an #SBATCH line of the scripts
        check_script_value(option(name), getattr(opts, name), sbatch_line=True)
    for arg in opts.sbatch_args:
        check_script_value(option("sbatch_args"), arg, sbatch_line=True)
        if not arg.startswith("-"):
            raise UserError(f"{option('sbatch_args')}: {_quoted(arg)} is not an sbatch option; expected one "
                            "such as --qos=low")


def check_script_value(name: str, value: str, sbatch_line: bool = False) -> None:
    """A value that `submit` writes into a batch script (run/slurm.py quotes it for the shell):
    refused with one line naming `name` if it holds a control character (a newline would end
    the line it is on) or text that is not UTF-8, or, on an #SBATCH line, what sbatch reads
    unlike the shell: a backslash (an escape even inside quotes), or "hetjob"/"packjob"
    (older sbatch takes a line naming them for the start of another job component)."""
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        what = "a control character" if unicodedata.category(bad) == "Cc" else "a byte that is not UTF-8"
        raise UserError(f"{name}: {_quoted(value)} holds {what} ({bad!r}), which a batch script cannot carry; "
                        "expected printable text")
    if sbatch_line:
        if "\\" in value:
            raise UserError(f"{name}: {_quoted(value)} holds a backslash, which sbatch reads as an escape on an "
                            "#SBATCH line; expected a value without one")
        named = next((w for w in ("hetjob", "packjob") if w in value.lower()), None)
        if named:
            raise UserError(f"{name}: {_quoted(value)} names {named!r}, which sbatch may take for the start of "
                            "another job component on an #SBATCH line; expected a value without it")


def _quoted(value: str, limit: int = 120) -> str:
    """`value` for an error line: quoted, control characters escaped, at most `limit` characters."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


_OPTION_CHECKS: dict[type, Callable[[Any], None]] = {Hessian: _check_hessian, Submit: _check_submit}


def check_options(opts: Hessian | Submit) -> None:
    """A verb's options: their bounds, then the rules of the table (errors name them as the
    user gave them: a keyword, or a flag under the command line)."""
    hints = _hints(type(opts))
    for f in dataclasses.fields(opts):  # the types and choices too: the object may be made by hand
        _coerce(option(f.name), getattr(opts, f.name), hints[f.name], from_text=False)
    _check_bounds(opts, option)
    _OPTION_CHECKS[type(opts)](opts)


def options(cls: type, values: dict[str, Any], caller: str, from_text: bool = False):
    """A checked `cls` (Hessian, Submit) from keywords (the Python interface) or from command-line
    text (`from_text`); an unknown or missing keyword is one line naming `caller`."""
    hints = _hints(cls)
    for key in values:
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            raise UserError(f"{caller}: unknown keyword {key!r}" + (f"; did you mean {close[0]}?" if close else
                                                                     f" (allowed: {', '.join(hints)})"))
    coerced = {k: _coerce(option(k), v, hints[k], from_text) for k, v in values.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in coerced
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{option(missing[0])}: required; expected {_describe(hints[missing[0]])}")
    opts = cls(**coerced)
    check_options(opts)
    return opts


def flags(cls: type) -> dict[str, str]:
    """{keyword: "--flag"} of the options of `cls`."""
    return {f.name: f.metadata.get("flag", "--" + f.name.replace("_", "-")) for f in dataclasses.fields(cls)}


def signature(cls: type, *before: inspect.Parameter) -> inspect.Signature:
    """The Python interface's signature for `cls`'s options as keywords (after `before`)."""
    hints = _hints(cls)
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                  default=inspect.Parameter.empty if f.default is dataclasses.MISSING
                                  and f.default_factory is dataclasses.MISSING else _default(f))
                for f in dataclasses.fields(cls)]
    return inspect.Signature([*before, *keywords])


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def add_option_arguments(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of `cls` (Hessian, Submit), with its docstring as help; the values
    stay text until `options_from_args` checks them, as the Python interface's are checked."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    hints = _hints(cls)
    names = flags(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        shown = "" if required or tp is bool else f" (default: {_show(_default(f))})"
        kwargs: dict[str, Any] = dict(dest=f"option:{f.name}", default=argparse.SUPPRESS,
                                      help=docs.get(f.name, "") + shown)
        if tp is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = f.metadata.get("metavar", _metavar(tp))
            if typing.get_origin(tp) is list:
                kwargs["action"] = "append"
            if required:
                kwargs["required"] = True
        group.add_argument(names[f.name], **kwargs)


def options_from_args(cls: type, args: argparse.Namespace, verb: str):
    """The checked options of `cls` given on a command line (add_option_arguments)."""
    given = {k.removeprefix("option:"): v for k, v in vars(args).items() if k.startswith("option:")}
    return options(cls, given, verb, from_text=True)


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
    check(spec)
    return resolve(spec)


def load(path: str | Path | None, overrides: dict[str, str] | None = None) -> Spec:
    """Read a TOML job spec (None: all defaults) and apply overrides."""
    table: dict[str, Any] = {}
    if path is not None:
        check_path(str(path), "spec")
        path = Path(path)
        readable_file(path, "spec", "a TOML job spec (omit it to take every default)")
        try:
            table = tomllib.loads(path.read_bytes().decode("utf-8"))
            userimport.remember(path.parent)  # "mynet:build" beside the spec is found
        except UnicodeDecodeError as exc:
            raise UserError(f"spec: {shown(str(path))} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                            f"offset {exc.start}); expected a TOML job spec") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"spec: {path} is not valid TOML ({exc})") from None
        except OSError as exc:
            raise UserError(f"spec: {shown(str(path))} cannot be read ({exc.strerror})") from None
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
