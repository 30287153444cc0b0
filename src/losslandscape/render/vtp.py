"""ParaView / VTK XML PolyData (.vtp) of a 2-D surface, for high-quality 3-D renders.

Like the original code's h5_to_vtp, every grid point is a point (x, y, z) with
z the value, and the grid cells are quadrilaterals -- here for any rectangular
nx x ny grid. Points that are not computed yet are still written (so point ids
are j * nx + i on every file) but no polygon uses them, and the point array
`computed` is 0 there; a partial coarse-to-fine surface gets the cells of
its last complete pass (`ranges.surface_lattice`). Diverged values are
clipped to `zmax`, or to the largest finite value; `log` stores log10 of the
values (non-positive values become the smallest positive one).
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import files, ranges
from losslandscape.surfacefile.read import Surface, check_computed


def _ascii(values: np.ndarray, fmt: str, per_line: int) -> str:
    flat = values.ravel()
    lines = []
    for start in range(0, flat.size, per_line):
        lines.append(" ".join(fmt % v for v in flat[start : start + per_line]))
    return "\n".join(lines)


def quads(computed: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n_quads, 4) point ids of the cells to draw: cells of the sub-grid
    `rows` x `cols` (see `ranges.surface_lattice`) whose four corners are computed."""
    nx = computed.shape[1]
    if rows.size < 2 or cols.size < 2:
        return np.zeros((0, 4), dtype=np.int64)
    r0, c0 = np.meshgrid(rows[:-1], cols[:-1], indexing="ij")
    r1, c1 = np.meshgrid(rows[1:], cols[1:], indexing="ij")
    # Counter-clockwise seen from +z: (r0,c0) -> (r0,c1) -> (r1,c1) -> (r1,c0).
    corners = np.stack([r0 * nx + c0, r0 * nx + c1, r1 * nx + c1, r1 * nx + c0], axis=-1).reshape(-1, 4)
    keep = computed.ravel()[corners].all(axis=1)
    return corners[keep].astype(np.int64)


def write_vtp(
    surface: Surface,
    out: Path,
    split: str,
    value: str,
    log: bool = False,
    zmax: float | None = None,
) -> Path:
    if surface.y is None:
        raise UserError(f"{surface.path} is a 1-D surface (no ycoordinates); vtp needs a 2-D one")
    name = f"{split}_{value}"
    z = check_computed(surface, name)
    computed = ~np.isnan(z)
    lattice = ranges.surface_lattice(surface.x, surface.y, z)
    rng = ranges.value_range([z], f"{surface.path} {name}", None, None, log)
    if zmax is not None and log and zmax <= 0:
        raise UserError(f"--zmax is {zmax}, expected a value > 0 with --log")
    z = ranges.clip_diverged(z, rng, zmax)
    if log:
        z = np.log10(z)
    z = np.where(computed, z, np.nanmin(z))  # placeholders, used by no polygon

    ny, nx = z.shape
    X, Y = np.meshgrid(surface.x, surface.y)  # (ny, nx)
    points = np.stack([X, Y, z], axis=-1).reshape(-1, 3)
    polys = quads(computed, *lattice)
    offsets = 4 * np.arange(1, len(polys) + 1, dtype=np.int64)
    scalar = f"log10_{name}" if log else name

    text = "\n".join(
        [
            '<?xml version="1.0"?>',
            '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
            "<PolyData>",
            f'<Piece NumberOfPoints="{nx * ny}" NumberOfVerts="0" NumberOfLines="0" '
            f'NumberOfStrips="0" NumberOfPolys="{len(polys)}">',
            "<Points>",
            '<DataArray type="Float32" Name="Points" NumberOfComponents="3" format="ascii">',
            _ascii(points, "%.7g", 3 * 4),
            "</DataArray>",
            "</Points>",
            f"<PointData Scalars={quoteattr(scalar)}>",
            f'<DataArray type="Float32" Name={quoteattr(scalar)} format="ascii">',
            _ascii(z, "%.7g", 12),
            "</DataArray>",
            '<DataArray type="UInt8" Name="computed" format="ascii">',
            _ascii(computed.astype(np.uint8), "%d", 40),
            "</DataArray>",
            "</PointData>",
            "<Polys>",
            '<DataArray type="Int64" Name="connectivity" format="ascii">',
            _ascii(polys, "%d", 4 * 6),
            "</DataArray>",
            '<DataArray type="Int64" Name="offsets" format="ascii">',
            _ascii(offsets, "%d", 12),
            "</DataArray>",
            "</Polys>",
            "</Piece>",
            "</PolyData>",
            "</VTKFile>",
            "",
        ]
    )
    return files.write_text(out, text, encoding="ascii")
