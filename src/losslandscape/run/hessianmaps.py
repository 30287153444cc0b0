"""The `hessian` verb: the Hessian's extreme eigenvalues at every point of a surface's grid
(Li et al., Sec. 6 and Fig. 8: the ratio |min/max| shows where a 2-D projection hides
non-convexity), and the spectrum at the centre.

The maps are a per-point job (work.Work) driven like a surface by driver.py: one
process, or a coordinator handing points to MPI workers that write through parallel HDF5;
resumable, coarse to fine. They are stored in the surface file as `max_eig`, `min_eig`
(float64, the layout of the losses, NaN where not computed) and `eig_done` (uint8), with
the settings as attributes (`hessian_split`, `hessian_samples`, `hessian_params`,
`hessian_tol`; the names are fileformat.py's). The Hessian is that of the MEAN loss over
the split (or a fixed, seeded subset of it), BatchNorm in eval mode; the numerics are in
hessian.py. It is taken with respect to the parameters the surface moves (its spec's
directions.include / exclude / trainable_only; all of them by default), the others held
fixed: the sub-Hessian of the moved set, of its tensors of 2+ dimensions with --params weights.

Writing the maps takes the surface file's write lock (writelock.py), and adding their datasets
or the centre's spectrum first reserves their room (diskspace.check_room): a full disk is one
line, the surface untouched.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from losslandscape.inputs import data as datasets
from losslandscape.surfacefile import room as diskspace
from losslandscape.surfacefile import format as ff
from losslandscape import spec as specs
from losslandscape.surfacefile import write as surface
from losslandscape.inputs import userimport
from losslandscape.errors import UserError, option, option_value
from losslandscape.numerics.evaluate import PointEvaluator
from losslandscape.numerics.grid import GridAxes, coarse_to_fine
from losslandscape.numerics.hessian import (HessianOperator, extreme_eigenvalues, hessian_params, hutchinson_trace, spectral_density,
                      top_eigenvalues)
from losslandscape.run.work import Done, Finished, Notes
from losslandscape.run.lifecycle import Prepared
from losslandscape.run.loading import attach_directions, start_evaluator
from losslandscape.surfacefile import lock as writelock

log = logging.getLogger(__name__)

CENTRE = ff.HESSIAN_CENTRE
CENTRE_ROOM = 256 << 10  # bytes reserved before the maps or the centre's spectrum are added to the file


Settings = specs.Hessian  # the verb's options: one dataclass in spec.py, for both front ends


@dataclass
class _Read:
    """What rank 0 needs of the surface file before the maps' datasets exist, read in one open."""
    spec: Any
    axes: GridAxes
    stored: dict  # the maps' settings attributes, None where absent
    done: np.ndarray | None  # flat bool of eig_done; None when the maps do not exist yet


def _read(path: Path, settings: Settings, device: str | None, trust_file: bool) -> _Read:
    """The spec the surface was made with, narrowed to the Hessian's split and samples (its
    factories findable where the file is the user's own, or `trust_file`: userimport.from_file),
    its axes and the state of its maps."""
    with ff.open_h5(path, "r") as f:
        if not ff.is_ours(f):
            raise UserError(f"hessian: {path} is not a losslandscape surface file (convert an original file first "
                            "by resuming it with `losslandscape surface`)")
        if ff.Y not in f:
            raise UserError(f"hessian: {path} is a 1-D surface; the eigenvalue maps need a 2-D surface (grid.y)")
        spec = specs.from_dict(ff.read_spec(f))
        folders = ff.import_dirs(f)
        axes = GridAxes(*ff.axes_arrays(f))
        stored = {k: f.attrs.get(k) for k in settings.attrs()}
        done = np.asarray(f[ff.EIG_DONE]).ravel() == 1 if ff.EIG_DONE in f else None
    userimport.from_file(path, folders, spec, trust_file)
    spec.data.splits = [settings.split]
    if settings.samples:
        if spec.data.max_samples and settings.samples > spec.data.max_samples:
            raise UserError(f"{option('samples')}: {settings.samples} is more than the {spec.data.max_samples} "
                            f"samples the surface was computed on")
        spec.data.max_samples = settings.samples
    if device:
        spec.evaluation.device = device
    spec.output.surface = str(path)
    return _Read(spec, axes, stored, done)


class HessianWork:
    """The steps of the Hessian maps (work.Work): plan and make give the maps' Settings when
    their datasets are to be (re)created.

    Rank 0 opens the file three times on a new run (read here; create; evaluate) and twice on a
    resume (read; evaluate): plan and prepare use what was read here."""

    label = "hessian"

    def __init__(self, path: Path, settings: Settings, device: str | None = None, trust_file: bool = False):
        self.path, self.settings = Path(path), settings
        self._read = _read(self.path, settings, device, trust_file)
        self.spec = self._read.spec
        self.unit_size = 1  # a point is many forward passes: hand them out one by one

    def plan(self) -> Settings | None:
        """Rank 0: the maps' settings when their datasets are to be created, or None when they
        exist with the same settings; other settings on a map with computed points are refused.
        Takes the surface file's write lock (writelock.py) for as long as this object lives."""
        self.settings.check()
        writelock.acquire(self.path, "computing the Hessian maps", "hessian", owner=self)
        if self._read.done is None:
            return self.settings
        computed = int(self._read.done.sum())
        for key, want in self.settings.attrs().items():
            have = self._read.stored[key]
            have = have.item() if isinstance(have, np.generic) else have
            if have != want and computed:
                name = key.removeprefix("hessian_")
                raise UserError(f"{option(name)}: the eigenvalue maps of {self.path} were computed with {have!r}, "
                                f"not {want!r}; resume with {option_value(name, have)} or compute them into a copy "
                                "of the surface")
        return None

    def make(self, plan: Settings, centre=None) -> Settings:
        return plan

    def collective(self, made: Settings) -> bool:
        return True

    def create(self, settings: Settings, notes: Notes, comm=None) -> None:
        """Add the maps' datasets (structure: collective under MPI), after rank 0 has reserved
        their room: a full disk is one line, the surface file untouched (diskspace.check_room)."""
        if comm is None or comm.rank == 0:
            diskspace.check_room(self.path, maps_nbytes(self._read.axes.size), field="hessian",
                          what="the eigenvalue maps of")
        with ff.writing(self.path, "hessian", comm=comm) as f:
            shape = f[ff.done_name(ff.SPLITS[0])].shape
            for name in (*ff.EIG_MAPS, ff.EIG_DONE):
                if name in f:
                    del f[name]
            for name in ff.EIG_MAPS:
                f.create_dataset(name, shape=shape, dtype="f8", fillvalue=np.nan, dcpl=surface.dcpl_early())
            f.create_dataset(ff.EIG_DONE, shape=shape, dtype="u1", fillvalue=0, dcpl=surface.dcpl_early())
            for k, v in settings.attrs().items():
                f.attrs[k] = v

    def load(self, worker_index: int = 0, workers_on_node: int = 1) -> PointEvaluator:
        s = self.settings
        full = copy.deepcopy(self.spec.data)
        full.max_samples = 0
        source = datasets.load_source(full, s.split)
        available = None if source.streamed else source.examples()
        if available is not None and s.samples > available:
            raise UserError(f"{option('samples')}: {s.samples} is more than the {available} samples of the "
                            f"{s.split} split")
        evaluator = start_evaluator(self.spec, worker_index, workers_on_node, fold=False)
        moved_params(evaluator, s.params)  # a choice that leaves nothing fails here, before any point
        return evaluator

    def prepare(self, created: bool, notes: Notes) -> Prepared:
        axes = self._read.axes
        done = np.zeros(axes.size, bool) if created or self._read.done is None else self._read.done
        order = coarse_to_fine(axes.shape)
        todo = order[~done[order]]
        log.info("hessian maps of %s (%s split, %s samples, %s parameters): %d of %d points done, %d to compute",
                 self.path, self.settings.split, self.settings.samples or "all", self.settings.params,
                 int(done.sum()), axes.size, len(todo))
        return Prepared(self.path, axes, todo, axes.size, created)

    def attach(self, evaluator: PointEvaluator, prep: Prepared, f=None, first: bool = True) -> None:
        attach_directions(evaluator, f if f is not None else prep.directions_file)

    def done(self, f) -> Done:
        return {"eig": np.asarray(f[ff.EIG_DONE]).ravel() == 1}

    def point(self, evaluator: PointEvaluator, p: int, a: float, b: float, done: Done) -> dict[str, Any]:
        """(largest, smallest) eigenvalue of the mean-loss Hessian at theta + a*dx + b*dy."""
        evaluator.move_to(a, b)
        inputs, targets = _data(evaluator, self.settings.split)
        op = HessianOperator(evaluator.model, moved_params(evaluator, self.settings.params), inputs, targets,
                             evaluator.loss, evaluator.batch_size)
        return {"eig": extreme_eigenvalues(op, tol=self.settings.tol)}

    def unit_values(self, evaluator: PointEvaluator, points: list[int], coords: list[tuple[float, float]],
                    done: Done, stop: Callable[[], bool]) -> list[dict[str, Any]] | None:
        """Streamed data: the unit's points one by one (a point is many passes over the data
        anyway, and units are single points); None once `stop()` is true."""
        values = []
        for p, (a, b) in zip(points, coords):
            if stop():
                return None
            values.append(self.point(evaluator, p, a, b, done))
        return values

    def writer(self, f, flush: bool = True) -> "EigenWriter":
        return EigenWriter(f, flush)

    def finished(self, path: Path) -> None:
        log.info("hessian maps complete: %s", path)


def moved_params(evaluator: PointEvaluator, which: str) -> dict:
    """The parameters the Hessian is taken with respect to: those of the surface's moved set
    (`evaluator.names`; with dir_type "states" its buffers are not parameters) that
    `which` keeps ("all", or "weights": 2+ dimensions)."""
    moved = set(evaluator.names)
    params = {name: p for name, p in hessian_params(evaluator.model, which).items() if name in moved}
    if not params:
        raise UserError(f"{option('params')}: {which!r} leaves no parameter of the {len(moved)} tensors the surface "
                        "moves (directions.include / exclude / trainable_only of its spec)")
    return params


class EigenWriter:
    """Writes finished points: the eigenvalues first, then the done flag (see surface.PointWriter)."""

    def __init__(self, f, flush: bool = True):
        self.f, self.flush = f, flush
        self.ds = {name: f[name] for name in (*ff.EIG_MAPS, ff.EIG_DONE)}
        self.shape = self.ds[ff.EIG_DONE].shape

    def write(self, unit: Finished) -> None:
        """A write the file system refuses ends the process with one line (diskspace.write_failed)."""
        try:
            self._write(unit)
        except Exception as exc:
            if diskspace.failed_write(exc):
                diskspace.write_failed(self.f.filename, exc, "hessian")
            raise

    def _write(self, unit: Finished) -> None:
        index = [np.unravel_index(int(p), self.shape) for p in unit.points]
        for idx, res in zip(index, unit.results):
            for name, value in zip(ff.EIG_MAPS, res["eig"]):
                self.ds[name][idx] = value
        if self.flush:
            self.f.flush()
        for idx in index:
            self.ds[ff.EIG_DONE][idx] = 1
        if self.flush:
            self.f.flush()


def maps_nbytes(points: int) -> int:
    """About the bytes the maps of a grid of `points` points add to the surface file: two float64
    maps and a uint8 flag per point, their headers and attributes (the grid's size is known from
    HessianWork's one read: no extra open of the file)."""
    return points * 17 + CENTRE_ROOM


def _data(evaluator: PointEvaluator, split: str):
    """The split's data for a HessianOperator: (its batches.Source, no separate targets)."""
    return evaluator.splits[split], None


def centre_spectrum(path: Path, settings: Settings, top_k: int = 5, device: str | None = None,
                    probes: int = 4, steps: int = 30, trace_samples: int = 100, trust_file: bool = False) -> dict:
    """At the surface's centre (the trained model): the top-k eigenvalues (descending), the
    smallest, a Hutchinson trace with its standard error and the spectral density (stochastic
    Lanczos quadrature). Stored in the file's `hessian_centre` group; returned as a dict. The file
    is opened twice: read, then written."""
    work = HessianWork(path, settings, device, trust_file)
    settings.check()
    evaluator = work.load()
    inputs, targets = _data(evaluator, settings.split)
    op = HessianOperator(evaluator.model, moved_params(evaluator, settings.params), inputs, targets, evaluator.loss,
                         evaluator.batch_size)
    top = top_eigenvalues(op, top_k, tol=settings.tol)
    _, smallest = extreme_eigenvalues(op, tol=settings.tol)
    trace, stderr = hutchinson_trace(op, samples=trace_samples)
    grid, density = spectral_density(op, steps=steps, probes=probes)
    result = {"file": str(path), **{k.removeprefix("hessian_"): v for k, v in settings.attrs().items()},
              "parameters": op.dim, "top_eigenvalues": top, "min_eigenvalue": smallest,
              "ratio_min_max": abs(smallest / top[0]) if top and top[0] else None,
              "trace": trace, "trace_stderr": stderr, "hutchinson_samples": trace_samples}
    with writelock.holding(path, "computing the Hessian spectrum", "hessian"), \
            ff.writing(path, "hessian", room=CENTRE_ROOM + 16 * len(grid)) as f:
        ff.write_centre_spectrum(f, top, grid, density,
                                 {k: v for k, v in result.items() if k not in ("top_eigenvalues", "file")})
    result["density"] = {"grid": grid.tolist(), "density": density.tolist()}
    return result


def format_centre(result: dict) -> str:
    top = ", ".join(f"{v:.5g}" for v in result["top_eigenvalues"])
    return "\n".join([
        f"{result['file']}: Hessian of the mean {result['split']} loss at the centre "
        f"({result['samples'] or 'all'} samples, {result['params']} parameters: {result['parameters']:,})",
        f"  top eigenvalues   {top}",
        f"  min eigenvalue    {result['min_eigenvalue']:.5g}",
        f"  |min/max|         {result['ratio_min_max']:.4g}" if result["ratio_min_max"] is not None else "",
        f"  trace (Hutchinson, {result['hutchinson_samples']} probes)  {result['trace']:.5g} "
        f"+- {result['trace_stderr']:.2g}",
    ]).replace("\n\n", "\n")
