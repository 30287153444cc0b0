"""The report of `make paper`: numbers and verdicts (`results.json`), figures (PNG) and one
self-contained page (`index.html`, the figures inlined, no network needed)."""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import platform
from pathlib import Path

import numpy as np
import torch

from losslandscape.surfacefile.read import Surface, load_surface
from losslandscape.paper import verdicts
from losslandscape.paper.plan import PATH_RUN, Scale, final
from losslandscape.paper.steps import step_times

log = logging.getLogger(__name__)


def _surface(work: Path, name: str) -> Surface:
    return load_surface(work / f"{name}.h5")


def _checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def layer_norms(state: dict) -> dict[str, float]:
    """The L2 norm of every weight tensor (more than one dimension) of a state dict."""
    return {k: float(v.double().norm()) for k, v in state.items() if v.is_floating_point() and v.dim() > 1}


def _fig_paths(out: Path, name: str) -> Path:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return out / "figures" / f"{name}.png"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def claim1(scale: Scale, work: Path, out: Path) -> tuple[dict, list[Path]]:
    plt = _plt()
    interp, line, norm, err, per_layer = {}, {}, {}, {}, {}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, wd, title in zip(axes, ("wd0", "wd"), ("without weight decay", "with weight decay")):
        s = _surface(work, f"interp-vgg9-{wd}")
        loss = s.values["train_loss"]
        interp[f"sb-{wd}"] = verdicts.sharpness(s.x, loss, 0.0)
        interp[f"lb-{wd}"] = verdicts.sharpness(s.x, loss, 1.0)
        ax.semilogy(s.x, loss, "b-", label="train loss")
        if "test_loss" in s.values:
            ax.semilogy(s.x, s.values["test_loss"], "b--", label="test loss")
        ax.axvline(0, color="gray", lw=0.6)
        ax.axvline(1, color="gray", lw=0.6)
        ax.set_title(f"{title}: small batch (x=0) to large (x=1)", fontsize=9)
        ax.set_xlabel("interpolation coefficient")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    figs = [_save(fig, _fig_paths(out, "claim1-interpolation"))]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, wd, title in zip(axes, ("wd0", "wd"), ("without weight decay", "with weight decay")):
        for size, colour, label in (("sb", "tab:blue", f"batch {scale.batch_small}"),
                                    ("lb", "tab:red", f"batch {scale.batch_large}")):
            run = f"vgg9-{size}-{wd}"
            s = _surface(work, f"line-{run}")
            line[f"{size}-{wd}"] = verdicts.sharpness(s.x, s.values["train_loss"], 0.0)
            ck = _checkpoint(final(str(work), scale, run))
            norms = layer_norms(ck["state_dict"])
            per_layer[f"{size}-{wd}"] = norms
            norm[f"{size}-{wd}"] = float(np.sqrt(sum(v * v for v in norms.values())))
            err[f"{size}-{wd}"] = 100.0 - float(ck["test_acc"])
            ax.semilogy(s.x, s.values["train_loss"], "-", color=colour, label=f"{label} train")
            if "test_loss" in s.values:
                ax.semilogy(s.x, s.values["test_loss"], "--", color=colour, label=f"{label} test")
        ax.set_title(f"filter-normalised, {title}", fontsize=9)
        ax.set_xlabel("random direction (filter-normalised)")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    figs.append(_save(fig, _fig_paths(out, "claim1-filter-normalised")))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    keys = list(per_layer)
    layers = list(per_layer[keys[0]])
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        ax.bar(np.arange(len(layers)) + k * width, [per_layer[key][layer] for layer in layers], width, label=key)
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
    ax.set_xticklabels([layer.replace(".weight", "") for layer in layers], rotation=60, fontsize=7)
    ax.set_ylabel("weight norm")
    ax.set_title("weight norm per layer (sb/lb: small/large batch; wd0/wd: without/with weight decay)", fontsize=9)
    ax.legend(fontsize=7)
    figs.append(_save(fig, _fig_paths(out, "claim1-weight-norms")))
    return verdicts.claim1(interp, line, norm, err), figs


def _contours(plt, surfaces: dict[str, Surface], rows: list[str], cols: list[str], names, title: str):
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.1 * len(cols), 3.0 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            s = surfaces[names(row, col)]
            z = np.log10(np.clip(s.values["train_loss"], 1e-8, 1e8))
            cs = ax.contour(s.x, s.y, z, levels=12, cmap="viridis", linewidths=0.8)
            ax.clabel(cs, fontsize=6, fmt="%.1f")
            ax.plot([0], [0], "r+", ms=8)
            ax.set_title(names(row, col), fontsize=9)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def claim2(scale: Scale, work: Path, out: Path) -> tuple[dict, list[Path]]:
    plt = _plt()
    names = [f"resnet{d}{s}" for d in scale.depths for s in ("", "_noshort")]
    surfaces = {n: _surface(work, f"surface-{n}") for n in names}
    minima = {n: verdicts.local_minima(s.values["train_loss"]) for n, s in surfaces.items()}
    fig = _contours(plt, surfaces, ["", "_noshort"], [str(d) for d in scale.depths],
                    lambda row, col: f"resnet{col}{row}",
                    "log10 train loss, filter-normalised random plane (top: with shortcuts, bottom: without)")
    return verdicts.claim2(minima, list(scale.depths)), [_save(fig, _fig_paths(out, "claim2-contours"))]


def claim3(scale: Scale, work: Path, out: Path) -> tuple[dict, list[Path]]:
    plt = _plt()

    def name(short: str, k: str) -> str:
        return f"resnet56{short}" if k == "1" else f"wrn56_{k}{short}"

    ks = [str(k) for k in scale.widths]
    surfaces = {name(s, k): _surface(work, f"surface-{name(s, k)}") for s in ("", "_noshort") for k in ks}
    radius = {n: verdicts.basin_radius(s.x, s.y, s.values["train_loss"]) for n, s in surfaces.items()}
    acc = {n: float(_checkpoint(final(str(work), scale, n))["test_acc"]) for n in surfaces}
    figs = [_save(_contours(plt, surfaces, ["", "_noshort"], ks, name,
                            "log10 train loss of ResNet-56 at width k (top: with shortcuts, bottom: without)"),
                  _fig_paths(out, "claim3-contours"))]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for short, style, label in (("", "o-", "with shortcuts"), ("_noshort", "s--", "without")):
        ax.plot([int(k) for k in ks], [radius[name(short, k)]["mean"] for k in ks], style, label=label)
        for k in ks:
            ax.annotate(f"{acc[name(short, k)]:.1f}%", (int(k), radius[name(short, k)]["mean"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("width k")
    ax.set_ylabel("basin radius")
    ax.set_title("basin radius by width (labels: test accuracy)", fontsize=9)
    ax.legend(fontsize=8)
    figs.append(_save(fig, _fig_paths(out, "claim3-basin-radius")))
    return verdicts.claim3(radius, list(scale.widths), acc), figs


def claim4(scale: Scale, work: Path, out: Path) -> tuple[dict, list[Path]]:
    from losslandscape.frontends.api import plot

    plt = _plt()
    names = [f"resnet{d}_noshort" for d in scale.hessian_depths]
    ratios, figs = {}, []
    for n in names:
        s = _surface(work, f"hessmap-{n}")
        if s.eig is None:
            raise ValueError(f"{s.path} has no Hessian maps")
        ratios[n] = verdicts.ratio_stats(s.eig["max"], s.eig["min"], s.x, s.y)
        fig = plot(s, kind="ratio")
        figs.append(_save(fig, _fig_paths(out, f"claim4-ratio-{n}")))
    plt.close("all")
    return verdicts.claim4(ratios, names[0], names[-1]), figs


def claim5(scale: Scale, work: Path, out: Path) -> tuple[dict, list[Path]]:
    from losslandscape.frontends.api import plot

    s = _surface(work, f"trajectory-{PATH_RUN}")
    fig = plot(s, kind="contour")
    return verdicts.claim5(list(s.explained_variance_ratio)), [_save(fig, _fig_paths(out, "claim5-trajectory"))]


CLAIMS = (claim1, claim2, claim3, claim4, claim5)


def write_report(scale: Scale, work: Path, out: Path, mpi: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    claims, figures = [], {}
    for make in CLAIMS:
        result, figs = make(scale, work, out)
        claims.append(result)
        figures[result["claim"]] = [str(p.relative_to(out)) for p in figs]
    times = step_times(work)
    results = {
        "scale": scale.name, "scale_about": scale.about,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}",
        "mpi_ranks": mpi, "compute_seconds": round(sum(times.values()), 1), "step_seconds": times,
        "held": sum(c["held"] for c in claims), "claims": claims, "figures": figures,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable))
    (out / "index.html").write_text(page(results, out))
    log.info("report: %s, %s", out / "index.html", out / "results.json")
    return results


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))


def page(results: dict, out: Path) -> str:
    """The report as one HTML page; the figures are inlined as data: URLs."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{c['claim']}</td><td>{e(c['title'])}</td>"
        f"<td class='{'held' if c['held'] else 'not'}'>{'held' if c['held'] else 'did not hold'}</td></tr>"
        for c in results["claims"])
    sections = []
    for c in results["claims"]:
        parts = "".join(f"<li class='{'held' if p['held'] else 'not'}'>{'&#10003;' if p['held'] else '&#10007;'} "
                        f"{e(p['text'])}</li>" for p in c["parts"])
        imgs = "".join(
            f"<img alt='{e(f)}' src='data:image/png;base64,"
            f"{base64.b64encode((out / f).read_bytes()).decode()}'>" for f in results["figures"][c["claim"]])
        numbers = e(json.dumps(c["numbers"], indent=1, default=_jsonable))
        sections.append(
            f"<section id='claim{c['claim']}'><h2>Claim {c['claim']}: {e(c['title'])} &mdash; "
            f"<span class='{'held' if c['held'] else 'not'}'>{'held' if c['held'] else 'did not hold'}</span></h2>"
            f"<ul>{parts}</ul><p class='rule'>Rule: {e(c['rule'])}</p>{imgs}"
            f"<details><summary>numbers</summary><pre>{numbers}</pre></details></section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>losslandscape: the paper's claims at {e(results['scale'])} scale</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; padding: 0 1em; }}
.held {{ color: #1a7f37; }} .not {{ color: #b3261e; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }} .rule {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>Li et al. (2018), reproduced at {e(results['scale'])} scale</h1>
<p>{e(results['scale_about'])}. {results['held']} of {len(results['claims'])} claims held.
Compute time {results['compute_seconds']:.0f} s ({results['mpi_ranks']} MPI rank(s)) on {e(results['machine'])};
written {e(results['created'])}. Every verdict is computed from the numbers by the rule stated under it.</p>
<table id="verdicts"><tr><th>#</th><th>claim</th><th>verdict</th></tr>{rows}</table>
{''.join(sections)}
</body></html>
"""
