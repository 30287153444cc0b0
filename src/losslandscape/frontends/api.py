"""The Python interface for notebooks: the same engine, file format and resume as the command line.

    import losslandscape as ll
    s = ll.compute_surface(model, train=(x, y), test=loader, x="-1:1:21", y="-1:1:21", out="s.h5")
    fig = ll.plot(s, kind="contour")

Every keyword is a field of the job spec (`losslandscape surface --help` lists them), by
its name (`norm=`, `seed=`, `batch_size=`) or as a whole table (`directions={"seed": 1}`);
they are validated by the same code and mistakes raise the same one-line `UserError`.
The caller's model is never touched: the engine works on a copy, and the weights it was
given are stored beside the surface file (`<out>.model.pt`), so that the file's identity
pins them (a resume with other weights is refused) and the command line can reproduce it.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import inspect
import logging
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from losslandscape import spec as specs
from losslandscape.inputs import data as datasets, userimport
from losslandscape.inputs.batches import first_item
from losslandscape.run.driver import StopFlag, run_serial
from losslandscape.errors import UserError, named_as_given
from losslandscape.run.hessianmaps import HessianWork, centre_spectrum
from losslandscape.run.work import SurfaceWork
from losslandscape.surfacefile.read import Surface, load_surface

log = logging.getLogger(__name__)

Data = tuple[torch.Tensor, torch.Tensor] | Iterable


def compute_surface(model: torch.nn.Module, train: Data | None = None, test: Data | None = None, *,
                    x: str = "-1:1:51", y: str = "", out: str | Path = "surface.h5", **options: Any) -> Surface:
    """Loss and accuracy of `model` on a grid around its weights, in the surface file `out`
    (created, or resumed when it exists: only missing points are computed).

    `train` / `test`: (inputs, targets) tensors or an iterable of (inputs, targets) batches
    (a DataLoader); the splits given are evaluated. `x`, `y`: axes as "lo:hi:n" (`y` empty:
    a 1-D curve). Other keywords: fields of the job spec. Returns the surface as read back
    from the file. Ctrl-C stops after the current point (streamed data: the unit of points being
    evaluated is dropped) and raises KeyboardInterrupt once the file is closed and its lock
    released; its `surface` attribute holds the points computed so far (as `open_surface(out)`
    does), and the same call computes the rest.
    """
    return _run(model, None, train, test, x, y, out, options, caller="compute_surface")


def interpolate(model_a: torch.nn.Module, model_b: torch.nn.Module, train: Data | None = None,
                test: Data | None = None, *, x: str = "-0.5:1.5:41", out: str | Path = "interpolation.h5",
                model_c: torch.nn.Module | None = None, y: str = "", **options: Any) -> Surface:
    """Loss and accuracy along the line from `model_a` (x = 0) to `model_b` (x = 1); BatchNorm
    running statistics move along by default, so x = 1 is `model_b`. With `model_c` and a `y`
    axis: the plane through the three models, (x, y) = (0, 1) is `model_c`."""
    options = {"kind": "interpolate", **options}
    return _run(model_a, model_b, train, test, x, y, out, options, model_c, caller="interpolate",
                models=("model_a", "model_b", "model_c"))


def compute_trajectory(model: torch.nn.Module, checkpoints: str, train: Data | None = None, test: Data | None = None, *,
               x: str = "-1:1:21", y: str = "-1:1:21", out: str | Path = "trajectory.h5", **options: Any) -> Surface:
    """The surface around `model` (the final model) on the plane of the first two principal
    components of a run's checkpoints (`checkpoints`: a glob of files with the model's keys),
    with the run's path stored in the file (`also=[...]`: more runs on the same plane)."""
    return _run(model, None, train, test, x, y, out, {"kind": "pca", "checkpoints": checkpoints, **options},
                caller="compute_trajectory")


def compute_hessian(surface: str | Path, **options: Any):
    """The `hessian` verb on a surface file: the maps of the extreme eigenvalues over its grid
    (returns the Surface, with `s.eig`), or with `centre=True` the spectrum at the trained
    model (returns a dict). The keywords are the verb's options (spec.Hessian: split, samples,
    params, tol, device, centre, top_k, trust_file), checked as the command line checks them.
    A surface computed in this process from a live model and tensors can be used; one from
    another process needs its model and data as module:factory names, imported from the file's
    own folder or the working directory, or, with `trust_file=True`, from the folders the file
    names (runs code its maker chose: files you trust only)."""
    with named_as_given(_given_rules(("model",), ())), _torch_settings_kept():
        settings = specs.options(specs.Hessian, options, "compute_hessian")
        device = settings.device or None
        if settings.centre:
            return centre_spectrum(Path(surface), settings, settings.top_k, device, trust_file=settings.trust_file)
        with _interrupted(Path(surface)):
            stop = StopFlag()
            code = run_serial(HessianWork(Path(surface), settings, device, settings.trust_file), stop)
            _stopped(code, stop, Path(surface))
    return load_surface(surface)


compute_hessian.__signature__ = specs.signature(
    specs.Hessian, inspect.Parameter("surface", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Path"))


def open_surface(path: str | Path) -> Surface:
    """A surface file (ours, a partial one, or the original code's) as numpy arrays:
    `s.x`, `s.y`, `s.train_loss`, ... with NaN where a point is not computed. Where the run's
    loss defines no accuracy (a regression, a language model's own loss, a user's loss that
    counts nothing correct) `s.has_accuracy` is False, `s.values` has no `_acc` keys and
    `s.train_acc` is None."""
    return load_surface(path)


def plot(surface: Surface | str | Path, kind: str = "contour", split: str | None = None,
         value: str | None = None, *, vmin: float | None = None, vmax: float | None = None,
         levels: int | None = None, log: bool | None = None, zmax: float | None = None):
    """A matplotlib Figure of one view of a surface, for a notebook or a paper: `kind` is curve
    (1-D), contour, filled, heatmap or surface3d (2-D); `split` train or test (default: the
    first computed), `value` loss or acc (default loss; acc only where the file holds an accuracy). `render` writes the same views to files."""
    from losslandscape.render.view import Options

    with named_as_given(_PLOT_RULES):
        return _figure(surface, kind, split, value, Options(vmin, vmax, levels, log, zmax))


# the renderer's errors name the command line's flags; plot's keywords are their names
_PLOT_RULES = [(r"--log\b", "log=True"), (r"--linear\b", "log=False"),
               (r"--(vmin|vmax|zmax|levels|kind|split|value)\b", r"\1")]


def _figure(surface, kind: str, split: str | None, value: str | None, opts):
    from losslandscape.render.kinds import FIGURES, HESSIAN_KINDS, KINDS_1D, KINDS_2D
    from losslandscape.render.view import check_value

    s = surface if isinstance(surface, Surface) else load_surface(surface)
    if kind in HESSIAN_KINDS:  # the `hessian` verb's results
        return curvature_figure(s, kind, opts)
    kinds = [k for k in (KINDS_1D if s.ndim == 1 else KINDS_2D) if k in FIGURES]  # those drawing one Figure
    if kind not in kinds:
        raise UserError(f"kind: {kind!r} does not fit {s.path} ({s.shape_text()}); expected one of {', '.join(kinds)}")
    splits = [split] if split else [sp for sp in s.splits if s.fraction_done.get(sp, 0) > 0][:1] or s.splits[:1]
    if not splits or splits[0] not in s.splits:
        raise UserError(f"split: {split!r} is not in {s.path} (it holds {', '.join(s.splits) or 'nothing'})")
    if value not in (None, "loss", "acc"):
        raise UserError(f"value: {value!r} is not valid; expected loss or acc")
    check_value([s], value, "value")
    value = value or "loss"
    ((_, _, fig),) = FIGURES[kind](s, splits, value, opts)
    return fig


def curvature_figure(s: Surface, kind: str, opts):
    """The Figure of one of the `hessian` verb's views (ratio, eigenvalues, spectrum) of `s`."""
    from losslandscape.render.kinds import FIGURES

    if kind == "spectrum":
        if s.centre_spectrum is None:
            raise UserError(f"kind: {s.path} has no spectrum at the centre; compute it with "
                            f"ll.compute_hessian({str(s.path)!r}, centre=True)")
    elif s.eig is None:
        raise UserError(f"kind: {s.path} has no Hessian maps; run `losslandscape hessian {s.path}` or "
                        f"ll.compute_hessian({str(s.path)!r})")
    ((_, _, fig),) = FIGURES[kind](s, [], None, opts)
    return fig


# --- the engine behind both -----------------------------------------------------------------

def _run(model, model_b, train, test, x, y, out, options, model_c=None, *, caller: str,
         models: tuple[str, ...] = ("model",)) -> Surface:
    """A surface of `caller` (compute_surface, interpolate, compute_trajectory), whose models are
    passed as `models` (their keywords): its errors name those keywords, not the spec values
    made up for them."""
    given = [(name, data) for name, data in (("train", train), ("test", test)) if data is not None]
    with named_as_given(_given_rules(models, [name for name, _ in given])), _torch_settings_kept():
        return _surface(model, model_b, model_c, given, x, y, Path(out), options, caller, models)


def _surface(model, model_b, model_c, given, x, y, out: Path, options, caller: str, models) -> Surface:
    if not given:
        raise UserError(f"{caller}: no data; give train=(inputs, targets) and/or test=..., "
                        "tensors or a DataLoader")
    for keyword, m in zip(models, (model, model_b, model_c)):
        if m is not None and not isinstance(m, torch.nn.Module):
            raise UserError(f"{keyword}: expected a torch.nn.Module, not {type(m).__name__}")
    table: dict[str, dict[str, Any]] = {"grid": {"x": x, "y": y}, "output": {"surface": str(out)},
                                        "data": {"splits": [name for name, _ in given]}}
    for key, value in options.items():
        section, name = _field(key, value, caller)
        made = [n for n in ((value if isinstance(value, dict) else ()) if name is None else (name,))
                if f"{section}.{n}" in _MADE]
        if made:
            raise UserError(f"{key}: {'its ' + repr(made[0]) + ' is' if name is None else 'it is'} set by {caller} "
                            f"from {_MADE[f'{section}.{made[0]}']}; leave it out")
        if name is None:
            table.setdefault(section, {}).update(value)
        else:
            table.setdefault(section, {})[name] = value
    loss = table.get("evaluation", {}).get("loss", "cross_entropy")
    splits = {name: _tensors(name, data, loss) for name, data in given}
    table["model"] = {**table.get("model", {}), "name": _register_model(model)}
    table["data"]["name"] = _register_data(splits)
    made = [f for f in (out.parent, *out.parent.parents) if not f.exists()]  # innermost first
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out: cannot make the folder {out.parent} ({exc.strerror})") from None
    existed = out.exists()
    written: list[Path] = []
    try:
        table["model"]["checkpoint"] = str(_save_weights(model, out, "model", written))
        if model_b is not None:
            table["model"]["checkpoint2"] = str(_save_weights(model_b, out, "model2", written))
        if model_c is not None:
            table["model"]["checkpoint3"] = str(_save_weights(model_c, out, "model3", written))
        spec = specs.from_dict(table)
        with _interrupted(out):
            stop = StopFlag()
            _stopped(run_serial(SurfaceWork(spec), stop), stop, out)
    except BaseException:
        if not existed and not out.exists():  # nothing computed: leave nothing behind
            for path in written:
                path.unlink(missing_ok=True)
            for folder in made:  # the folders this call made, if it left them empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    return load_surface(out)


def _stopped(code: int, stop: StopFlag, out: Path) -> None:
    """After a run (its file closed, its lock released): Ctrl-C raises KeyboardInterrupt, as
    Python's convention asks (a script that goes on would take a partial surface for a whole
    one); another signal (SIGTERM) is a warning, and the partial surface is returned."""
    if stop.signum == signal.SIGINT:
        raise KeyboardInterrupt(f"stopped by Ctrl-C: {out} holds the points computed so far (this exception's "
                                ".surface, or ll.open_surface); the same call computes the rest")
    if code != 0:
        log.warning("stopped early: %s holds the points computed so far; call again to finish", out)


@contextlib.contextmanager
def _torch_settings_kept():
    """The process-wide torch settings a run sets (its CPU threads, and TF32 allowed or not by
    evaluation.precision) are the caller's again when the call returns or raises: a notebook's
    training after a surface runs as it ran before."""
    threads = torch.get_num_threads()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@contextlib.contextmanager
def _interrupted(out: Path):
    """A KeyboardInterrupt leaving the block (Ctrl-C after the current point, or a second Ctrl-C
    at once) carries the surface as far as it is computed: `exc.surface` (None where no file
    was made)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        exc.surface = None
        if out.exists():
            try:
                exc.surface = load_surface(out)
            except Exception:  # the interrupt is what the caller must see
                pass
        raise


# the spec values a call makes itself, and from what
_MADE = {"model.name": "the model given", "model.checkpoint": "the model given (its weights, kept beside out)",
         "model.checkpoint2": "model_b", "model.checkpoint3": "model_c", "data.name": "train= and test=",
         "output.surface": "out"}


def _given_rules(models: tuple[str, ...], splits) -> list[tuple[str, str]]:
    """The rules (errors.named_as_given) by which a call's errors name what it was given: its
    data (`splits`: the keywords train, test) and its models (`models`: their keywords, in the
    order of model.checkpoint, checkpoint2, checkpoint3), never the names and files the call
    made up for them; other spec fields keep their names (`output.surface`, `grid.x`)."""
    data = "/".join(splits) or "train/test"
    models = (*models, "model_b", "model_c")
    return [
        (r"data\.name: the surface file (.+?) was made with 'python:data-[0-9a-f]+', this spec gives "
         r"'python:data-[0-9a-f]+'", rf"{data}: the surface file \1 was made with other data than this call gives"),
        (r"data\.name: (.*?)python:data-[0-9a-f]+\('(train|test)'\)", r"\2: \1the data given as \2="),
        (r"python:data-[0-9a-f]+\('(train|test)'\)", r"the data given as \1="),
        (r"'?python:data-[0-9a-f]+'?", f"the data given as {data}"),
        (r"\bdata\.name\b", data),
        (r"\bmodel\.name\b", models[0]),
        (r"'python:([^'\s]+)'", r"\1"),  # a model's class, for its generated name
        (r"\bpython:(?=\S)", ""),
        (r"\bmodel\.checkpoint3\b", models[2]),
        (r"\bmodel\.checkpoint2\b", models[1]),
        (r"\bmodel\.checkpoint\b", models[0]),
        (r"resume with the file's spec", "give the values it was made with"),
        (r"resume with the file's (grid|loss)", r"give the file's \1"),
    ]


def _field(key: str, value: Any, caller: str = "compute_surface") -> tuple[str, str | None]:
    """(table, field) of a keyword: a table given whole (field None), or a field by its name."""
    if key in specs.SURFACE_TABLES:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a dict of its fields, e.g. {key}={{...}}")
        return key, None
    for section in specs.SURFACE_TABLES:  # their order decides a bare name (seed = directions.seed)
        if key in specs.SECTIONS[section].__dataclass_fields__:
            return section, key
    names = [n for s in specs.SURFACE_TABLES for n in specs.SECTIONS[s].__dataclass_fields__]
    close = difflib.get_close_matches(key, names, n=1)
    raise UserError(f"{caller}: unknown keyword {key!r}" + (
        f"; did you mean {close[0]}?" if close else
        f"; expected a field of the job spec's tables ({', '.join(specs.SURFACE_TABLES)}), README: Job specs"))


def _tensors(split: str, data: Data, loss: str = "cross_entropy"):
    """(inputs, targets) on the CPU from tensors (the in-memory path), or the data as given (a
    Dataset, a DataLoader or a re-iterable of batches: streamed, batches.py). Dtypes are kept as
    a stream's are (the model gets floating inputs in its own dtype: batches.input_dtype);
    integer targets become int64 class indices, floating ones stay as given, whatever the `loss`
    (cross_entropy refuses them in one line, as it does a Dataset's)."""
    if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        if isinstance(data, (str, bytes)) or not (isinstance(data, Iterable) or hasattr(data, "__getitem__")):
            raise UserError(f"{split}: expected (inputs, targets) tensors, a Dataset, a DataLoader or an iterable "
                            f"of batches, not {type(data).__name__}")
        return data
    inputs, targets = data
    if len(inputs) != len(targets):
        raise UserError(f"{split}: {len(inputs)} inputs but {len(targets)} targets")
    inputs, targets = inputs.detach().cpu(), targets.detach().cpu()
    return inputs, (targets if targets.is_floating_point() else targets.long())


def _digest(parts: Iterable[torch.Tensor | str]) -> str:
    h = hashlib.sha256()
    for t in parts:
        if isinstance(t, str):  # a dict batch's key
            h.update(f"key {t!r}".encode())
            continue
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _leaves(obj) -> Iterable[torch.Tensor | str]:
    """The tensors of a batch or an item in a fixed order, a dict's keys before their values
    (a dict batch and a tuple of the same tensors are other data)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield str(k)
            yield from _leaves(obj[k])
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _leaves(v)


def _data_tensors(splits: dict) -> Iterable[torch.Tensor]:
    """What identifies the data: the tensors of in-memory splits; of a stream, its length (where
    it has one) and its first batch or item, so that a resume with other data is refused."""
    for name in sorted(splits):
        data = splits[name]
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            yield from data
            continue
        if hasattr(data, "__len__"):
            yield torch.tensor([len(data)])
        yield from _leaves(first_item(data, name, f"the {type(data).__name__}"))


def _register_model(model: torch.nn.Module) -> str:
    """A model name for the spec, served by a factory that returns a CPU copy of `model`
    (the weights themselves come from the saved checkpoint)."""
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"model: expected a torch.nn.Module, not {type(model).__name__}")
    name = f"python:{type(model).__module__}.{type(model).__qualname__}"
    userimport.register(name, lambda: _cpu_copy(model))
    return name


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    try:
        clone = copy.deepcopy(model)  # the caller's module (weights, buffers, mode, device) stays as it is
    except Exception as exc:
        raise UserError(f"model: copy.deepcopy cannot copy it ({type(exc).__name__}: {exc}), and the surface is "
                        "computed on a copy, the model given left as it is; keep what cannot be copied (a lock, a "
                        "file, a generator) out of the module's attributes") from exc
    return clone.cpu()


def _register_data(splits: dict) -> str:
    """A data name for the spec that identifies the data (a resume with other data is refused)."""
    name = "python:data-" + _digest(_data_tensors(splits))
    userimport.register(name, lambda split: _split(splits, split))
    # this call's data, never an earlier call's: two calls may give data of one digest (a stream
    # is identified by its length and first item only) and the loaded splits are cached by name
    datasets.forget_loaded()
    return name


def _split(splits, split: str):
    if split not in splits:
        raise UserError(f"{split}: asked for, but no {split}= data was given (to the call that made the surface)")
    return splits[split]


def _save_weights(model: torch.nn.Module, out: Path, tag: str, written: list[Path]) -> Path:
    """The model's state dict beside the surface file. Never replaced under an existing surface:
    other weights there mean another surface, which is refused in one line."""
    path = out.with_name(f"{out.name}.{tag}.pt")
    # on the CPU once per distinct tensor, without a copy where it is there already: tied weights
    # (a language model's lm_head and its embedding) stay one tensor, which torch.save writes once
    once: dict[tuple, torch.Tensor] = {}
    state = {}
    for k, v in model.state_dict().items():
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)
        if key not in once:
            once[key] = v.detach().cpu()
        state[k] = once[key]
    if path.exists():
        try:
            old = torch.load(path, map_location="cpu", weights_only=True)
            same = old.keys() == state.keys() and all(torch.equal(old[k], state[k]) for k in state)
        except Exception:  # unreadable: no record to keep
            same = False
        if same:
            return path
        if out.exists():
            raise UserError(f"model: these weights are not the ones {out} was computed around (kept in {path}); "
                            "give that model, or choose another out")
    torch.save(state, path)
    written.append(path)
    return path
