"""One self-contained interactive page per surface: a rotatable 3-D surface and a
heat map with contour lines, drawn by a few hundred lines of plain JavaScript
on two 2-D canvases.

The page loads nothing: no script, style sheet, font or image comes from the
network, so it opens on a cluster login node, from an e-mail, or offline.
The data sit in the page as JSON (values rounded to 6 significant digits,
null where not computed, diverged points clipped to the top of the range).
Each series carries its starting scale, `log`: the user's --log/--linear, or by
default log for a loss spanning more than two decades (`common.auto_log`); the
page's "log scale" box starts there for each series and can be toggled.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common
from losslandscape.render.surfacefile import Surface

MAX_CMAP = 256


def _colormap() -> list[list[int]]:
    import matplotlib

    rgba = matplotlib.colormaps[common.CMAP](np.linspace(0.0, 1.0, MAX_CMAP))
    return [[int(round(255 * c)) for c in row[:3]] for row in rgba]


def _rounded(a: np.ndarray) -> list:
    """Nested lists of floats (6 significant digits), None for NaN."""
    if a.ndim > 1:
        return [_rounded(row) for row in a]
    return [None if np.isnan(v) else float(f"{v:.6g}") for v in a.tolist()]


def _half_step(a: np.ndarray) -> float:
    return float(np.min(np.abs(np.diff(a)))) / 2 if a.size > 1 else 0.5


def page_data(
    surface: Surface,
    splits: list[str],
    values: list[str],
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
    zmax: float | None = None,
) -> dict:
    """The JSON embedded in the page."""
    if surface.y is None:
        raise UserError(f"{surface.path} is a 1-D surface (no ycoordinates); html needs a 2-D one")
    series = []
    for split in splits:
        for value in values:
            name = f"{split}_{value}"
            z = surface.values.get(name)
            if z is None or np.all(np.isnan(z)):
                continue
            rows, cols = common.surface_lattice(surface.x, surface.y, z)
            x, y, z, crows, ccols = common.compact_grid(surface.x, surface.y, z)
            finite = z[np.isfinite(z)]
            diverged = int(np.isposinf(z).sum())
            if finite.size == 0:
                continue  # every point diverged: nothing to draw
            series_log = common.auto_log([finite], value, vmin, vmax, log)
            z = np.where(np.isposinf(z), float(finite.max()), z)
            z = np.where(np.isneginf(z), float(finite.min()), z)
            series.append(
                {
                    "name": name,
                    "label": common.value_label(split, value),
                    "value": value,
                    "log": series_log,
                    "done": surface.fraction_done.get(split, 1.0),
                    "diverged": diverged,
                    "x": _rounded(x),
                    "y": _rounded(y),
                    "z": _rounded(z),
                    # The sub-grid with whole cells, for the 3-D view and the contours.
                    "rows": np.searchsorted(crows, rows).tolist(),
                    "cols": np.searchsorted(ccols, cols).tolist(),
                }
            )
    if not series:
        asked = ", ".join(f"{s}_{v}" for s in splits for v in values)
        raise UserError(f"{surface.path}: nothing is computed yet for {asked}")
    return {
        "model": surface.model_name,
        "file": surface.path.name,
        "grid": [int(surface.x.size), int(surface.y.size)],
        # The map always spans the whole grid, however little of it is computed.
        "extent": [float(surface.x.min()), float(surface.x.max()), float(surface.y.min()), float(surface.y.max())],
        "half_step": [_half_step(surface.x), _half_step(surface.y)],
        "xlabel": common.axis_label(surface, "x").replace(r"$\alpha$", "α"),
        "ylabel": common.axis_label(surface, "y"),
        "cmap": _colormap(),
        "options": {"vmin": vmin, "vmax": vmax, "levels": levels, "log": log, "zmax": zmax},
        "series": series,
    }


def write_html(surface: Surface, out: Path, splits: list[str], values: list[str], **options) -> Path:
    data = page_data(surface, splits, values, **options)
    # "</" inside a <script> element would end it early.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = f"{surface.model_name}: loss landscape ({surface.path.name})"
    text = (
        _PAGE.replace("@TITLE@", html.escape(title))
        .replace("@HEADING@", html.escape(surface.model_name))
        .replace("@SUBTITLE@", html.escape(f"{surface.path.name}, {surface.shape_text()} grid"))
        .replace("@DATA@", payload)
        .replace("@SCRIPT@", _SCRIPT)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
         margin: 12px 16px; color: #222; background: #fff; }
  h1 { font-size: 18px; margin: 0 0 2px 0; }
  .sub { color: #666; margin-bottom: 8px; }
  .controls { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin-bottom: 8px; }
  .views { display: flex; gap: 12px; flex-wrap: wrap; }
  .view { flex: 1 1 380px; min-width: 300px; }
  .view h2 { font-size: 13px; font-weight: 600; margin: 0 0 4px 0; color: #444; }
  canvas { width: 100%; aspect-ratio: 1 / 0.9; border: 1px solid #ddd; border-radius: 4px;
           display: block; touch-action: none; }
  #view3d { cursor: grab; }
  #readout { font-variant-numeric: tabular-nums; color: #333; min-height: 1.4em; margin-top: 6px; }
  .hint { color: #888; font-size: 12px; }
</style>
</head>
<body>
<h1>@HEADING@</h1>
<div class="sub">@SUBTITLE@ <span id="done"></span></div>
<div class="controls">
  <label>Show <select id="series"></select></label>
  <label><input type="checkbox" id="log"> log scale</label>
  <button id="reset" type="button">reset view</button>
  <span class="hint">drag the 3-D view to rotate, scroll to zoom; hover the map to read values</span>
</div>
<div class="views">
  <div class="view"><h2>3-D surface</h2><canvas id="view3d"></canvas></div>
  <div class="view"><h2>Heat map and contours</h2><canvas id="view2d"></canvas></div>
</div>
<div id="readout"></div>
<script type="application/json" id="surface-data">@DATA@</script>
<script>
@SCRIPT@
</script>
</body>
</html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("surface-data").textContent);
  var sel = document.getElementById("series");
  var logBox = document.getElementById("log");
  var readout = document.getElementById("readout");
  var doneSpan = document.getElementById("done");
  var c3 = document.getElementById("view3d");
  var c2 = document.getElementById("view2d");
  var view = { az: -0.6, el: 0.6, zoom: 1.0 };
  var P = null;  // the prepared series

  D.series.forEach(function (s, i) {
    var o = document.createElement("option");
    o.value = String(i);
    o.textContent = s.label;
    sel.appendChild(o);
  });
  // Each series starts on its own scale (log for a loss spanning many decades).
  function startScale() { logBox.checked = !!D.series[+sel.value || 0].log; }
  startScale();

  function fmt(v) {
    if (v === null || !isFinite(v)) return "-";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return String(Number(v.toPrecision(3)));
  }

  function rgb(c, k) {
    return "rgb(" + Math.round(Math.min(255, c[0] * k)) + "," + Math.round(Math.min(255, c[1] * k)) +
      "," + Math.round(Math.min(255, c[2] * k)) + ")";
  }

  function prepare() {
    var s = D.series[+sel.value || 0];
    var lo = Infinity, hi = -Infinity, minPos = Infinity;
    s.z.forEach(function (row) {
      row.forEach(function (v) {
        if (v === null) return;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        if (v > 0 && v < minPos) minPos = v;
      });
    });
    var log = logBox.checked && isFinite(minPos);
    if (D.options.vmin !== null && (!log || D.options.vmin > 0)) lo = D.options.vmin;
    if (D.options.vmax !== null) hi = D.options.vmax;
    if (log && lo <= 0) lo = minPos;
    var f = log ? function (v) { return Math.log10(Math.max(v, lo)); } : function (v) { return v; };
    var flo = f(lo), fhi = f(hi);
    if (!(fhi > flo)) fhi = flo + 1;
    var ztop = fhi;
    if (D.options.zmax !== null && (!log || D.options.zmax > 0)) ztop = Math.min(fhi, f(D.options.zmax));
    if (!(ztop > flo)) ztop = fhi;
    var xmin = D.extent[0], xmax = D.extent[1], ymin = D.extent[2], ymax = D.extent[3];
    P = {
      s: s, log: log, lo: lo, hi: hi, f: f, flo: flo, fhi: fhi, ztop: ztop,
      xmin: xmin, xmax: xmax === xmin ? xmin + 1 : xmax, ymin: ymin, ymax: ymax === ymin ? ymin + 1 : ymax,
      t: function (v) { return Math.min(1, Math.max(0, (f(v) - flo) / (fhi - flo))); },
      inv: function (u) { return log ? Math.pow(10, u) : u; }
    };
    var notes = [];
    if (s.done < 1) notes.push(Math.round(100 * s.done) + "% done");
    if (s.diverged > 0) notes.push(s.diverged + " diverged points clipped");
    doneSpan.textContent = notes.length ? "(" + notes.join(", ") + ")" : "";
  }

  function color(t) {
    return D.cmap[Math.round(Math.min(1, Math.max(0, t)) * (D.cmap.length - 1))];
  }

  function fitCanvas(c) {
    var r = window.devicePixelRatio || 1;
    var w = Math.max(200, Math.round(c.clientWidth * r)), h = Math.max(180, Math.round(c.clientHeight * r));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    var ctx = c.getContext("2d");
    ctx.setTransform(r, 0, 0, r, 0, 0);
    return { ctx: ctx, W: w / r, H: h / r };
  }

  // ---- 3-D: painter's algorithm over shaded quads, orthographic camera ----
  function draw3d() {
    var g = fitCanvas(c3), ctx = g.ctx, W = g.W, H = g.H;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    var s = P.s, nx = s.x.length, ny = s.y.length;
    var stx = Math.max(1, Math.ceil(s.cols.length / 100)), sty = Math.max(1, Math.ceil(s.rows.length / 100));
    var ca = Math.cos(view.az), sa = Math.sin(view.az), ce = Math.cos(view.el), se = Math.sin(view.el);
    var scale = Math.min(W, H) * 0.3 * view.zoom, cx = W / 2, cy = H / 2 + 0.04 * H;
    function world(i, j, v) {
      var px = 2 * (s.x[i] - P.xmin) / (P.xmax - P.xmin) - 1;
      var py = 2 * (s.y[j] - P.ymin) / (P.ymax - P.ymin) - 1;
      var pz = v === null ? null : 1.2 * (Math.min(P.f(v), P.ztop) - P.flo) / (P.ztop - P.flo) - 0.6;
      return [px, py, pz];
    }
    function project(p) {
      var rx = p[0] * ca - p[1] * sa, ry = p[0] * sa + p[1] * ca;
      return [cx + scale * rx, cy - scale * (ry * se + p[2] * ce), -ry * ce + p[2] * se];
    }
    // The floor of the box, under the surface.
    var floor = [[-1, -1, -0.6], [1, -1, -0.6], [1, 1, -0.6], [-1, 1, -0.6]].map(project);
    ctx.strokeStyle = "#bbb";
    ctx.lineWidth = 1;
    ctx.beginPath();
    floor.forEach(function (q, k) { if (k) ctx.lineTo(q[0], q[1]); else ctx.moveTo(q[0], q[1]); });
    ctx.closePath();
    ctx.stroke();
    var is = [], js = [], nc = s.cols.length, nr = s.rows.length;
    for (var i = 0; i < nc; i += stx) is.push(s.cols[i]);
    if (nc && is[is.length - 1] !== s.cols[nc - 1]) is.push(s.cols[nc - 1]);
    for (var j = 0; j < nr; j += sty) js.push(s.rows[j]);
    if (nr && js[js.length - 1] !== s.rows[nr - 1]) js.push(s.rows[nr - 1]);
    var drawn = {};
    var quads = [];
    var light = [-0.4, -0.5, 0.77];
    for (var b = 0; b + 1 < js.length; b++) {
      for (var a = 0; a + 1 < is.length; a++) {
        var i0 = is[a], i1 = is[a + 1], j0 = js[b], j1 = js[b + 1];
        var v = [s.z[j0][i0], s.z[j0][i1], s.z[j1][i1], s.z[j1][i0]];
        if (v[0] === null || v[1] === null || v[2] === null || v[3] === null) continue;
        drawn[j0 + "," + i0] = drawn[j0 + "," + i1] = drawn[j1 + "," + i1] = drawn[j1 + "," + i0] = true;
        var w = [world(i0, j0, v[0]), world(i1, j0, v[1]), world(i1, j1, v[2]), world(i0, j1, v[3])];
        var p = w.map(project);
        // Normal from the diagonals, for Lambert shading with a fixed light.
        var d1 = [w[2][0] - w[0][0], w[2][1] - w[0][1], w[2][2] - w[0][2]];
        var d2 = [w[3][0] - w[1][0], w[3][1] - w[1][1], w[3][2] - w[1][2]];
        var n = [d1[1] * d2[2] - d1[2] * d2[1], d1[2] * d2[0] - d1[0] * d2[2], d1[0] * d2[1] - d1[1] * d2[0]];
        var nl = Math.hypot(n[0], n[1], n[2]) || 1;
        var lam = Math.abs(n[0] * light[0] + n[1] * light[1] + n[2] * light[2]) / nl;
        var mean = (P.t(v[0]) + P.t(v[1]) + P.t(v[2]) + P.t(v[3])) / 4;
        quads.push({ p: p, depth: (p[0][2] + p[1][2] + p[2][2] + p[3][2]) / 4, c: color(mean), k: 0.6 + 0.5 * lam });
      }
    }
    // Computed points in no whole cell (a partial surface) show as dots.
    for (var jj = 0; jj < ny; jj++) {
      for (var ii = 0; ii < nx; ii++) {
        var zv = s.z[jj][ii];
        if (zv === null || drawn[jj + "," + ii]) continue;
        var pp = project(world(ii, jj, zv));
        quads.push({ dot: pp, depth: pp[2], c: color(P.t(zv)), k: 1 });
      }
    }
    quads.sort(function (q, r) { return q.depth - r.depth; });
    var edges = quads.length < 2500;
    ctx.lineWidth = 0.5;
    quads.forEach(function (q) {
      if (q.dot) {
        ctx.fillStyle = rgb(q.c, 1);
        ctx.beginPath();
        ctx.arc(q.dot[0], q.dot[1], 2.5, 0, 2 * Math.PI);
        ctx.fill();
        return;
      }
      ctx.beginPath();
      ctx.moveTo(q.p[0][0], q.p[0][1]);
      ctx.lineTo(q.p[1][0], q.p[1][1]);
      ctx.lineTo(q.p[2][0], q.p[2][1]);
      ctx.lineTo(q.p[3][0], q.p[3][1]);
      ctx.closePath();
      var fill = rgb(q.c, q.k);
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.strokeStyle = edges ? "rgba(0,0,0,0.18)" : fill;
      ctx.stroke();
    });
    // Axis labels at the floor's edges and the height range on one corner.
    ctx.fillStyle = "#333";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    var lx = project([0, -1.25, -0.6]), ly = project([1.25, 0, -0.6]);
    ctx.fillText(D.xlabel, lx[0], lx[1]);
    ctx.fillText(D.ylabel, ly[0], ly[1]);
    var zb = project([-1, -1, -0.6]), zt = project([-1, -1, 0.6]);
    ctx.strokeStyle = "#999";
    ctx.beginPath(); ctx.moveTo(zb[0], zb[1]); ctx.lineTo(zt[0], zt[1]); ctx.stroke();
    ctx.textAlign = "right";
    [[P.flo, zb], [P.ztop, zt]].forEach(function (e) {
      var text = fmt(P.inv(e[0]));  // right-aligned, but never cut off at the left edge
      ctx.fillText(text, Math.max(e[1][0] - 6, ctx.measureText(text).width + 4), e[1][1] + 4);
    });
    ctx.textAlign = "left";
    ctx.fillText(P.s.label + (P.log ? " (log scale)" : ""), 8, 16);
  }

  // ---- 2-D: heat map cells, marching-squares contours, colour bar ----
  var map = null;  // geometry of the last 2-D drawing, for hovering

  // Cell edges halfway between points; the outer cells get half a grid step.
  function edgesOf(a, half) {
    var e = [], sign = a.length > 1 && a[1] < a[0] ? -1 : 1;
    for (var k = 0; k <= a.length; k++) {
      if (k === 0) e.push(a[0] - sign * half);
      else if (k === a.length) e.push(a[k - 1] + sign * half);
      else e.push((a[k - 1] + a[k]) / 2);
    }
    return e;
  }

  function ticks(lo, hi, n) {
    var out = [];
    for (var k = 0; k < n; k++) out.push(lo + (hi - lo) * k / (n - 1));
    return out;
  }

  // Where the level crosses the cell edge from (xa, ya) to (xb, yb), in pixels.
  function crossing(pts, lev, va, vb, xa, ya, xb, yb) {
    if ((va < lev) !== (vb < lev)) {
      var u = (lev - va) / (vb - va);
      pts.push([xa + u * (xb - xa), ya + u * (yb - ya)]);
    }
  }

  function draw2d() {
    var g = fitCanvas(c2), ctx = g.ctx, W = g.W, H = g.H;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    var s = P.s, nx = s.x.length, ny = s.y.length;
    var L = 56, R = 78, T = 14, B = 44;
    var pw = W - L - R, ph = H - T - B;
    var hx = D.half_step[0], hy = D.half_step[1];
    var xe = edgesOf(s.x, hx), ye = edgesOf(s.y, hy);
    var x0 = D.extent[0] - hx, x1 = D.extent[1] + hx, y0 = D.extent[2] - hy, y1 = D.extent[3] + hy;
    function X(v) { return L + pw * (v - x0) / (x1 - x0); }
    function Y(v) { return T + ph * (1 - (v - y0) / (y1 - y0)); }
    map = { X: X, Y: Y, L: L, T: T, pw: pw, ph: ph, x0: x0, x1: x1, y0: y0, y1: y1 };
    ctx.fillStyle = "#f4f4f4";
    ctx.fillRect(L, T, pw, ph);
    for (var j = 0; j < ny; j++) {
      for (var i = 0; i < nx; i++) {
        var v = s.z[j][i];
        if (v === null) continue;
        var xa = X(xe[i]), xb = X(xe[i + 1]), ya = Y(ye[j]), yb = Y(ye[j + 1]);
        ctx.fillStyle = rgb(color(P.t(v)), 1);
        ctx.fillRect(Math.min(xa, xb), Math.min(ya, yb), Math.abs(xb - xa) + 0.6, Math.abs(yb - ya) + 0.6);
      }
    }
    // Contours in the (log) colour space, on the same levels as the colour bar.
    var nlev = D.options.levels || 12;
    ctx.strokeStyle = "rgba(0,0,0,0.55)";
    ctx.lineWidth = 0.8;
    ctx.beginPath();
    for (var k = 0; k < nlev; k++) {
      var lev = P.flo + (k + 0.5) * (P.fhi - P.flo) / nlev;
      for (var rj = 0; rj + 1 < s.rows.length; rj++) {
        for (var ci = 0; ci + 1 < s.cols.length; ci++) {
          var jj = s.rows[rj], j2 = s.rows[rj + 1], ii = s.cols[ci], i2 = s.cols[ci + 1];
          var a = s.z[jj][ii], b = s.z[jj][i2], c = s.z[j2][i2], d = s.z[j2][ii];
          if (a === null || b === null || c === null || d === null) continue;
          a = P.f(a); b = P.f(b); c = P.f(c); d = P.f(d);
          var pts = [];
          var xA = s.x[ii], xB = s.x[i2], yA = s.y[jj], yB = s.y[j2];
          crossing(pts, lev, a, b, X(xA), Y(yA), X(xB), Y(yA));
          crossing(pts, lev, b, c, X(xB), Y(yA), X(xB), Y(yB));
          crossing(pts, lev, c, d, X(xB), Y(yB), X(xA), Y(yB));
          crossing(pts, lev, d, a, X(xA), Y(yB), X(xA), Y(yA));
          if (pts.length >= 2) { ctx.moveTo(pts[0][0], pts[0][1]); ctx.lineTo(pts[1][0], pts[1][1]); }
          if (pts.length === 4) { ctx.moveTo(pts[2][0], pts[2][1]); ctx.lineTo(pts[3][0], pts[3][1]); }
        }
      }
    }
    ctx.stroke();
    // Frame, ticks and labels.
    ctx.strokeStyle = "#444";
    ctx.lineWidth = 1;
    ctx.strokeRect(L, T, pw, ph);
    ctx.fillStyle = "#222";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ticks(D.extent[0], D.extent[1], 5).forEach(function (v) {
      ctx.beginPath(); ctx.moveTo(X(v), T + ph); ctx.lineTo(X(v), T + ph + 4); ctx.stroke();
      ctx.fillText(fmt(v), X(v), T + ph + 16);
    });
    ctx.textAlign = "right";
    ticks(D.extent[2], D.extent[3], 5).forEach(function (v) {
      ctx.beginPath(); ctx.moveTo(L - 4, Y(v)); ctx.lineTo(L, Y(v)); ctx.stroke();
      ctx.fillText(fmt(v), L - 6, Y(v) + 4);
    });
    ctx.textAlign = "center";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(D.xlabel, L + pw / 2, H - 8);
    ctx.save();
    ctx.translate(14, T + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(D.ylabel, 0, 0);
    ctx.restore();
    // Colour bar.
    var bx = L + pw + 14, bw = 12;
    for (var q = 0; q < ph; q++) {
      ctx.fillStyle = rgb(color(1 - q / ph), 1);
      ctx.fillRect(bx, T + q, bw, 1.5);
    }
    ctx.strokeRect(bx, T, bw, ph);
    ctx.textAlign = "left";
    ctx.font = "11px system-ui, sans-serif";
    barTicks().forEach(function (u) {
      var yy = T + ph * (1 - (u - P.flo) / (P.fhi - P.flo));
      ctx.fillStyle = "#222";
      ctx.fillText(fmt(P.inv(u)), bx + bw + 4, yy + 4);
    });
  }

  // Colour-bar ticks (in the colour space): powers of ten on a log scale
  // spanning a few decades, else five evenly spaced values.
  function barTicks() {
    if (P.log) {
      var out = [];
      for (var e = Math.ceil(P.flo - 1e-9); e <= P.fhi + 1e-9; e++) out.push(e);
      if (out.length > 6) out = out.filter(function (e) { return e % 2 === 0; });
      if (out.length >= 3) return out;
    }
    return ticks(P.flo, P.fhi, 5);
  }

  function drawAll() {
    prepare();
    draw3d();
    draw2d();
  }

  // ---- interaction ----
  var drag = null;
  c3.addEventListener("pointerdown", function (e) {
    drag = { x: e.clientX, y: e.clientY };
    c3.setPointerCapture(e.pointerId);
    c3.style.cursor = "grabbing";
  });
  c3.addEventListener("pointermove", function (e) {
    if (!drag) return;
    view.az += (e.clientX - drag.x) * 0.01;
    view.el = Math.max(-0.2, Math.min(1.55, view.el + (e.clientY - drag.y) * 0.01));
    drag = { x: e.clientX, y: e.clientY };
    window.requestAnimationFrame(draw3d);
  });
  function endDrag() { drag = null; c3.style.cursor = "grab"; }
  c3.addEventListener("pointerup", endDrag);
  c3.addEventListener("pointercancel", endDrag);
  c3.addEventListener("wheel", function (e) {
    e.preventDefault();
    view.zoom = Math.max(0.3, Math.min(4, view.zoom * Math.exp(-e.deltaY * 0.001)));
    window.requestAnimationFrame(draw3d);
  }, { passive: false });
  c2.addEventListener("mousemove", function (e) {
    if (!map) return;
    var r = c2.getBoundingClientRect();
    var px = e.clientX - r.left, py = e.clientY - r.top;
    var xv = map.x0 + (px - map.L) / map.pw * (map.x1 - map.x0);
    var yv = map.y0 + (1 - (py - map.T) / map.ph) * (map.y1 - map.y0);
    var s = P.s, bi = 0, bj = 0;
    s.x.forEach(function (v, i) { if (Math.abs(v - xv) < Math.abs(s.x[bi] - xv)) bi = i; });
    s.y.forEach(function (v, j) { if (Math.abs(v - yv) < Math.abs(s.y[bj] - yv)) bj = j; });
    var z = s.z[bj][bi];
    readout.textContent = "x = " + fmt(s.x[bi]) + ", y = " + fmt(s.y[bj]) + ": " + s.label + " = " +
      (z === null ? "not computed" : fmt(z));
  });
  document.getElementById("reset").addEventListener("click", function () {
    view = { az: -0.6, el: 0.6, zoom: 1.0 };
    draw3d();
  });
  sel.addEventListener("change", function () { startScale(); drawAll(); });
  logBox.addEventListener("change", drawAll);
  window.addEventListener("resize", drawAll);
  drawAll();
})();
"""
