"""Safe checkpoint loading and key normalisation.

Checkpoints load with `torch.load(weights_only=True)`: tensors and plain
containers only. A file that needs full unpickling (a pickled nn.Module, an
optimizer object) is refused unless the user says they trust it.
Accepted layouts: a plain state dict, `{"state_dict": ...}` (the original
loss-landscape code's .t7/.pt files), `{"model_state_dict": ...}`, and keys
prefixed by `module.` (DataParallel / DistributedDataParallel); the original code's
`{"state_dict", "acc", "epoch"}` files load in either of torch.save's formats (the zip
one, and the older one of PyTorch < 1.6), with `acc` a float or a tensor. Checkpoints
saved before PyTorch 0.4.1 have no BatchNorm `num_batches_tracked` counters: the
model keeps its own (eval-mode outputs never read them), as PyTorch does for them.
A `.safetensors`
file (Hugging Face) loads with `safetensors.torch.load_file`: tensors only, safe
by construction, so it never needs trust.

A folder is a Hugging Face model folder (`save_pretrained`): its weights are the first of
HF_WEIGHTS found in it, `model.safetensors`, the sharded `model.safetensors.index.json` (a
`weight_map` from each key to its shard in the folder), then `pytorch_model.bin` and its
sharded index, which load with weights_only like any PyTorch file. The folder's config is not
read: the model comes from model.name, and the weights must fit it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from losslandscape.errors import UserError, readable_file

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# the weights of a Hugging Face model folder, in the order they are looked for
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_state_dict(path: str | Path, trust: bool = False, field: str = "model.checkpoint",
                    mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (or of a Hugging Face model folder), keys without any
    `module.` prefix. `mmap`: a PyTorch file's tensors are mapped, not read (only what is
    used is read); a file of PyTorch < 1.6's format, which cannot be mapped, is read whole."""
    path = Path(path)
    if path.is_dir():
        state: dict[str, torch.Tensor] = {}
        for file in checkpoint_files(path, field):
            state.update(load_state_dict(file, trust, field, mmap))
        return state
    if path.suffix == ".safetensors":
        return normalise(_load_safetensors(path, field), field, path)
    readable_file(path, field, "a PyTorch checkpoint")
    try:
        with warnings.catch_warnings():
            if not trust:  # torch warns about the pickle protocol of a file it then refuses: one line is ours
                warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap and _zip(path))
    except pickle.UnpicklingError as exc:
        # torch wraps every weights-only failure, garbage bytes included, in "Weights only load
        # failed"; only a refused class (a GLOBAL, or an object of one) means "needs trust"
        if not trust and ("GLOBAL" in str(exc) or "allowlisted" in str(exc)):
            raise UserError(
                f"{field}: {path} needs full unpickling, which can run arbitrary code; "
                "pass --trust-checkpoint if you trust where it came from") from None
        detail = str(exc).split("WeightsUnpickler error:")[-1]  # drop torch's advice to disable weights_only
        raise UserError(f"{field}: {path} is not a PyTorch checkpoint ({_first_line(detail)})") from None
    except Exception as exc:  # garbage bytes make the unpicklers fail in many ways (KeyError, IndexError, ...)
        raise UserError(f"{field}: {path} is not a PyTorch checkpoint ({_first_line(exc)})") from None
    return normalise(obj, field, path)


def _zip(path: Path) -> bool:
    """Whether a PyTorch file is of torch.save's zip format (which torch.load can map)."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def checkpoint_files(path: str | Path, field: str = "model.checkpoint") -> list[Path]:
    """The files a checkpoint is read from: the file itself, or in a Hugging Face model folder
    its weights file, or the shards its index names (sorted, each once); one line naming
    what was looked for when the folder has none, or an index that is not one."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    found = next((path / name for name in HF_WEIGHTS if (path / name).is_file()), None)
    if found is None:
        raise UserError(f"{field}: the folder {str(path)!r} has none of {', '.join(HF_WEIGHTS)}; expected a "
                        "checkpoint file or a Hugging Face model folder (save_pretrained)")
    if not found.name.endswith(".index.json"):
        return [found]
    try:
        weight_map = json.loads(found.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        if not shards or not all(isinstance(s, str) for s in shards):
            raise ValueError("no shard names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{field}: {found} is not a sharded checkpoint's index (expected JSON with a "
                        f"\"weight_map\" from keys to shard files: {_first_line(exc)})") from None
    files = []
    for name in shards:
        shard = path / name
        if Path(name).name != name or not shard.is_file():  # shards sit in the folder itself
            raise UserError(f"{field}: {found} names the shard {name!r}, which is not a file in {str(path)!r}")
        files.append(shard)
    return files


def _load_safetensors(path: Path, field: str) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file (as safetensors.torch.load_file reads them)."""
    with _safe_open(path, field) as handle:
        try:
            return {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # safetensors raises its own SafetensorError, and OSError, for a bad file
            raise UserError(f"{field}: {path} is not a valid safetensors file ({_first_line(exc)})") from None


def normalise(obj, field: str = "model.checkpoint", path: Path | str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise UserError(f"{field}: {path} holds no state dict (expected a dict of tensors, "
                        f"or one under {', '.join(repr(k) for k in WRAPPER_KEYS)})")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def apply_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], field: str = "model.checkpoint") -> None:
    """Load `state` into `model`, or say in one line which keys do not fit."""
    own = model.state_dict()
    state = _bn_counters_filled(model, _tied_filled(own, state))
    _check_fits({k: tuple(t.shape) for k, t in own.items()}, {k: tuple(t.shape) for k, t in state.items()}, field)
    model.load_state_dict(state, strict=True)


def _check_fits(own: dict[str, tuple], state: dict[str, tuple], field: str) -> None:
    """One line naming the keys of a checkpoint (their shapes `state`) that do not fit a model's (`own`)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k] != own[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong:
            parts.append("wrong shape " + _few([f"{k} {state[k]} vs {own[k]}" for k in wrong]))
        raise UserError(f"{field}: does not fit the model: " + "; ".join(parts))


def _tied_filled(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the tied entries it leaves out (a Hugging Face checkpoint stores a language
    model's output weights once, as the input embedding they share) taken from their twin."""
    by_storage: dict[tuple, list[str]] = {}
    for k, t in own.items():
        if t.numel():
            by_storage.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), []).append(k)
    filled = dict(state)
    for names in by_storage.values():
        present = [k for k in names if k in state]
        for k in names:
            if k not in filled and present:
                filled[k] = state[present[0]]
    return filled


def _bn_counters_filled(model: torch.nn.Module, state: dict) -> dict:
    """`state` (tensors, or their shapes) with the `num_batches_tracked` counters it lacks taken
    from `model`, for every BatchNorm whose running statistics it has (PyTorch < 0.4.1 saved none)."""
    filled = dict(state)
    for prefix, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.num_batches_tracked is not None:
            key = f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"
            stats = f"{prefix}.running_mean" if prefix else "running_mean"
            if key not in filled and stats in filled:
                filled[key] = m.num_batches_tracked
    return filled


def file_sha256(path: str | Path, field: str = "model.checkpoint") -> str:
    """The SHA-256 of a file; of a Hugging Face model folder, that of the names and SHA-256s of
    the files its weights are read from (checkpoint_files)."""
    if Path(path).is_dir():
        digest = hashlib.sha256()
        for file in checkpoint_files(path, field):
            digest.update(f"{file.name}\0{file_sha256(file, field)}\0".encode())
        return digest.hexdigest()
    readable_file(path, field)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _few(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} key(s): {shown}" + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def build_and_load(model_spec, in_channels: int, checkpoint: str | None = None,
                   field: str = "model.checkpoint") -> torch.nn.Module:
    """The spec's model with the weights of `checkpoint` (default: model.checkpoint), on the CPU."""
    from losslandscape.inputs.models import build_model

    model = build_model(model_spec.name, num_classes=model_spec.num_classes, in_channels=in_channels)
    path = model_spec.checkpoint if checkpoint is None else checkpoint
    if path:
        state = load_state_dict(path, model_spec.trust_checkpoint, field)
        try:
            apply_state_dict(model, state, field)
        except UserError as exc:
            hint = _original_hint(model_spec.name, state, model_spec.num_classes, in_channels)
            if not hint:
                raise
            raise UserError(f"{exc}; {hint}") from None
    return model


def _original_hint(name: str, state: dict[str, torch.Tensor], num_classes: int, in_channels: int) -> str:
    """What to write instead when `state`, refused by zoo model `name`, fits the original
    loss-landscape code's network of that name (its ResNets have other shortcuts); else ""."""
    from losslandscape.inputs.models import ZOO

    original = f"original_{name}"
    if original not in ZOO:
        return ""
    with torch.device("meta"):  # keys and shapes only: no memory, no init
        model = ZOO[original](num_classes=num_classes, in_channels=in_channels)
    own = model.state_dict()
    state = _bn_counters_filled(model, state)
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        return ""
    return (f'it fits {original}, the original loss-landscape code\'s {name}: set model.name = "{original}"')


# --- a model too large for one rank: built without its parameters, read by rows ---------------

@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While on, every parameter a module registers is put on the meta device (shape and dtype,
    no memory; its initialisation does nothing), while buffers stay real: a buffer computed in
    the constructor and not saved (a rotary embedding's inverse frequencies) keeps its values.
    A parameter's own tensor is allocated by its module first and never written (torch.empty:
    no memory is touched)."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


class CheckpointTensors:
    """A checkpoint's tensors (a file or a Hugging Face model folder), each read when asked for,
    whole or some of its rows: a .safetensors file through `safe_open`, opened for each read
    and closed after it (only the rows asked for are read, and no page of the file stays
    mapped: resident memory is what is kept); a PyTorch file mapped for as long as this is
    kept (torch.load mmap; a file of PyTorch < 1.6 is read whole). Keys as `load_state_dict`
    gives them."""

    def __init__(self, path: str | Path, trust: bool = False, field: str = "model.checkpoint"):
        self.path, self.trust, self.field = path, trust, field
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._at: dict[str, tuple[object, str]] = {}  # key -> (a safetensors file or a mapped tensor, its own key)
        for file in checkpoint_files(path, field):
            if file.suffix == ".safetensors":
                with _safe_open(file, field) as handle:
                    found = {key: (file, key) for key in handle.keys()}
                    shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in found}
            else:
                state = load_state_dict(file, trust, field, mmap=True)
                found = {key: (t, key) for key, t in state.items()}
                shapes = {key: tuple(t.shape) for key, t in state.items()}
            if found and all(k.startswith("module.") for k in found):
                found = {k.removeprefix("module."): v for k, v in found.items()}
                shapes = {k.removeprefix("module."): v for k, v in shapes.items()}
            self._at.update(found)
            self.shapes.update(shapes)

    def __getstate__(self):  # sent to another rank as its path: that rank opens it itself
        return (self.path, self.trust, self.field)

    def __setstate__(self, state) -> None:
        self.__init__(*state)

    def rows(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start:stop of tensor `key` (all of a 0-dim tensor), on the CPU in the file's dtype."""
        where, own = self._at[key]
        whole = stop is None or not self.shapes[key]
        if isinstance(where, torch.Tensor):
            return where.clone() if whole else where[start:stop].clone()
        try:
            with _safe_open(where, self.field) as handle:
                return handle.get_tensor(own) if whole else handle.get_slice(own)[start:stop]  # copies: the file is closed
        except UserError:
            raise
        except Exception as exc:  # a file cut short or changed since it was opened
            raise UserError(f"{self.field}: {self.path}: tensor {key!r} cannot be read ({_first_line(exc)})") from None


def _safe_open(path: Path, field: str):
    readable_file(path, field, "a safetensors file")
    try:
        from safetensors import safe_open  # noqa: PLC0415 (needed for .safetensors files only)
    except ImportError:
        raise UserError(f"{field}: {path} is a safetensors file and the safetensors package is not installed; "
                        "pip install safetensors") from None
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError, and OSError, for a bad file
        raise UserError(f"{field}: {path} is not a valid safetensors file ({_first_line(exc)})") from None


class ModelRows(Mapping):
    """The weights of a model built on the meta device (`build_on_meta`), read from its
    checkpoint when asked for: `rows(name, start, stop)` of a parameter, or a whole one as
    {name: tensor} (one at a time), each in the parameter's dtype (as load_state_dict copies)."""

    def __init__(self, tensors: CheckpointTensors, keys: dict[str, str], dtypes: dict[str, torch.dtype]):
        self.tensors, self.keys, self.dtypes = tensors, keys, dtypes

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.tensors.rows(self.keys[name], start, stop).to(self.dtypes[name])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors.rows(self.keys[name]).to(self.dtypes[name])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape}, from the checkpoint's header (nothing read)."""
        return {name: self.tensors.shapes[key] for name, key in self.keys.items()}

    def only(self, names: list[str]) -> "ModelRows":
        """The same over parameters `names` (the moved ones)."""
        return ModelRows(self.tensors, {n: self.keys[n] for n in names}, self.dtypes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _all_on_meta(model: torch.nn.Module) -> None:
    """Put on the meta device any parameter a factory set without registering it (straight
    into `_parameters`), tied twins kept tied: every parameter is then read from the checkpoint."""
    moved: dict[int, torch.nn.Parameter] = {}
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and not p.is_meta:
                if id(p) not in moved:
                    moved[id(p)] = torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
                m._parameters[name] = moved[id(p)]


def build_on_meta(model_spec, in_channels: int, field: str = "model.checkpoint") -> tuple[torch.nn.Module, ModelRows]:
    """The spec's model with its parameters on the meta device (no memory) and its buffers
    real, the checkpoint's buffers loaded into them, and its parameters to be read from the
    checkpoint (`ModelRows`), checked to fit it (names, tied twins, shapes) from the
    checkpoint's header alone. For a model sharded over ranks: each reads its rows only."""
    from losslandscape.inputs.models import build_model

    tensors = CheckpointTensors(model_spec.checkpoint, model_spec.trust_checkpoint, field)
    try:
        with parameters_on_meta():
            model = build_model(model_spec.name, num_classes=model_spec.num_classes, in_channels=in_channels)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"model.name: {model_spec.name} failed with its parameters on the meta device, where "
                        "evaluation.ranks_per_model > 1 with a model.checkpoint builds it (each rank then reads its "
                        f"rows of the checkpoint): {type(exc).__name__}: {_first_line(exc)}; a factory that computes "
                        "with its parameters, or loads weights itself, cannot be built there") from None
    _all_on_meta(model)
    own = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    twins: dict[int, list[str]] = {}  # a parameter's names (tied twins share one Parameter)
    for name, p in model.named_parameters(remove_duplicate=False):
        twins.setdefault(id(p), []).append(name)
    state = dict(tensors.shapes)
    keys = {}
    for name, p in model.named_parameters():  # a twin the checkpoint leaves out is read as the one it has
        key = next((k for k in twins[id(p)] if k in tensors.shapes), None)
        if key is not None:
            keys[name] = key
            for k in twins[id(p)]:
                state.setdefault(k, tensors.shapes[key])
    # the BatchNorm counters PyTorch < 0.4.1 did not save, as their shapes
    state = {k: tuple(v.shape) if torch.is_tensor(v) else v for k, v in _bn_counters_filled(model, state).items()}
    _check_fits(own, state, field)
    with torch.no_grad():
        params = {id(p) for p in model.parameters()}
        for name, b in model.state_dict(keep_vars=True).items():
            if id(b) not in params and name in tensors.shapes:
                b.copy_(tensors.rows(name))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    log.info("built %s with its parameters on the meta device: each rank reads its rows of %s",
             model_spec.name, model_spec.checkpoint)
    return model, ModelRows(tensors, keys, dtypes)
