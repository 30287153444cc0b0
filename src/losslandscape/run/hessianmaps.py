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
or the centre's spectrum first reserves their room (surface.add_maps, room.check_room): a full disk is one
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
from losslandscape.surfacefile import format as ff
from losslandscape import spec as specs
from losslandscape.surfacefile import write as surface
from losslandscape.inputs import userimport
from losslandscape.errors import UserError, option, option_value
from losslandscape.numerics.evaluate import PointEvaluator
from losslandscape.numerics.grid import GridAxes, coarse_to_fine
from losslandscape.numerics.hessian import (HessianOperator, extreme_eigenvalues, hessian_params, deflated_trace, spectral_density,
                      top_eigenvalues)
from losslandscape.run.work import Done, Notes
from losslandscape.surfacefile.write import Prepared
from losslandscape.run.loading import attach_directions, start_evaluator
from losslandscape.surfacefile import lock as writelock
from losslandscape.surfacefile.read import read_maps_source

log = logging.getLogger(__name__)

CENTRE = ff.HESSIAN_CENTRE
CENTRE_ROOM = ff.CENTRE_ROOM


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
    source = read_maps_source(path)
    try:
        spec = specs.from_dict(source.spec)
    except UserError as exc:  # the file's spec, not the user's: name the file, cut what it quotes
        raise UserError(f"hessian: {path}: attribute spec: {ff.shown(exc, 2 * ff.MAX_SHOWN)}") from None
    axes, stored, done = GridAxes(source.x, source.y), source.stored, source.done
    userimport.from_file(path, source.import_dirs, spec, trust_file)
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
        self.ranks_per_model = 1  # each worker holds the whole model (evaluation.ranks_per_model is the surface's)

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
        their room: a full disk is one line, the surface file untouched (surface.add_maps)."""
        surface.add_maps(self.path, settings.attrs(), self._read.axes.size, comm)

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
        if evaluator.share is not None:
            raise ValueError("the Hessian maps evaluate a whole model per worker")
        attach_directions(evaluator, f if f is not None else prep.directions_file, self.spec.evaluation.hold_directions)

    def done(self, f) -> Done:
        return {"eig": ff.maps_done(f)}

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

    def writer(self, f, flush: bool = True) -> surface.PointWriter:
        return surface.PointWriter(f, flush, maps=True)

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


def _data(evaluator: PointEvaluator, split: str):
    """The split's data for a HessianOperator: (its batches.Source, no separate targets)."""
    return evaluator.splits[split], None


def centre_spectrum(path: Path, settings: Settings, top_k: int = 5, device: str | None = None,
                    probes: int = 4, steps: int = 30, trust_file: bool = False) -> dict:
    """At the surface's centre (the trained model): the top-k eigenvalues (descending), the
    smallest, the trace with its standard error from `settings.probes` products (seed
    `settings.seed`; hessian.deflated_trace) and the spectral density (stochastic Lanczos
    quadrature, `probes` vectors of `steps` steps). Stored in the file's `hessian_centre` group; returned as a dict. The file
    is opened twice: read, then written."""
    work = HessianWork(path, settings, device, trust_file)
    settings.check()
    evaluator = work.load()
    inputs, targets = _data(evaluator, settings.split)
    op = HessianOperator(evaluator.model, moved_params(evaluator, settings.params), inputs, targets, evaluator.loss,
                         evaluator.batch_size)
    top = top_eigenvalues(op, top_k, tol=settings.tol)
    _, smallest = extreme_eigenvalues(op, tol=settings.tol)
    trace = deflated_trace(op, products=settings.probes, seed=settings.seed)
    grid, density = spectral_density(op, steps=steps, probes=probes)
    result = {"file": str(path), **{k.removeprefix("hessian_"): v for k, v in settings.attrs().items()},
              "parameters": op.dim, "top_eigenvalues": top, "min_eigenvalue": smallest,
              "ratio_min_max": abs(smallest / top[0]) if top and top[0] else None,
              "trace": trace.trace, "trace_stderr": trace.stderr, "trace_method": trace.method,
              "trace_products": trace.products, "trace_deflated": trace.deflated, "trace_seed": trace.seed}
    with writelock.holding(path, "computing the Hessian spectrum", "hessian"):
        surface.write_centre_spectrum(path, top, grid, density,
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
        f"  trace             {result['trace']:.5g} +- {result['trace_stderr']:.2g} ({result['trace_method']}, "
        f"{result['trace_products']} products, seed {result['trace_seed']})",
    ]).replace("\n\n", "\n")
