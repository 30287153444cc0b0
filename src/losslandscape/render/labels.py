"""Words shared by every view, matplotlib and Plotly alike: titles (with what the surface was
made from), axis and value labels, legend labels, how a Hessian was taken, and the names of
the files written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile.read import VALUE_LABELS, Surface


def done_note(surface: Surface, split: str) -> str:
    """'' when the split is complete, else ' (37% done)'."""
    return fraction_note(surface.fraction_done.get(split, 1.0))


def fraction_note(fraction: float) -> str:
    """'' for 1 (complete), else ' (37% done)'."""
    if fraction >= 1.0:
        return ""
    pct = 100 * fraction
    text = f"{pct:.0f}" if pct >= 1 else f"{pct:.1g}"
    return f" ({text}% done)"


def literal(text: str) -> str:
    r"""Text from a file (a name, a path) as matplotlib shows it as it is: each $ escaped (\$), so that
    it starts no mathtext (a crafted "$\frac{$" would stop the drawing); htmlparts.text undoes it."""
    return text.replace("$", r"\$")


def model_label(surface: Surface) -> str:
    """The model's name as a user knows it, raw (not `literal`): the file's `labels` name (a model
    given to the Python interface: its class name, "Sequential"), else the spec's model name
    ("resnet56", "mymodels:make_net"; a file of the Python interface from before `labels`:
    "python:torch.nn.modules.container.Sequential" becomes "Sequential"), else the file's stem."""
    name = _labels(surface).get("name")
    if name:
        return name
    name = surface.model_name
    return name.rpartition(".")[2] if name.startswith(ff.PYTHON_NAME) and "." in name else name


def model_end(surface: Surface, key: str = "checkpoint") -> str | None:
    """What pictures call the model of `model.<key>` (checkpoint, checkpoint2, checkpoint3), for
    matplotlib (`literal`): the file's `labels` entry ("model A", "model B" for ll.interpolate's
    models; "" where nothing names it), else its checkpoint's file name (checkpoint_name)."""
    label = _labels(surface).get(key)
    name = label if label is not None else checkpoint_name(surface, key)
    return None if name is None else literal(name)


def _labels(surface: Surface) -> dict[str, str]:
    """The file's `labels` attribute ({model field: text}, checked by format.check_file and cut to
    format.MAX_SHOWN characters as it was read); {} where the file has none (before it, or a run
    of the command line, whose spec holds the user's names)."""
    table = ff.spec_table(surface.attrs.get(ff.A_LABELS))
    return {k: v for k, v in (table or {}).items() if isinstance(v, str)}


def title(surface: Surface, split: str, value: str) -> str:
    """'resnet56: train loss (37% done)', and below it what the surface was made from."""
    head = f"{literal(model_label(surface))}: {split} {VALUE_LABELS[value]}{done_note(surface, split)}"
    made = "; ".join(provenance(surface))
    return f"{head}\n{made}" if made else head


def curve_title(surface: Surface, splits: list[str], values: list[str]) -> str:
    """'vgg9: loss and accuracy (train 37% done)', and below it what the surface was made from."""
    what = " and ".join(VALUE_LABELS[v] for v in values)
    if len(splits) == 1:
        what = f"{splits[0]} {what}"
    partial = [f"{s} {done_note(surface, s).strip(' ()')}" for s in splits if done_note(surface, s)]
    head = f"{literal(model_label(surface))}: {what}" + (f" ({', '.join(partial)})" if partial else "")
    made = "; ".join(provenance(surface))
    return f"{head}\n{made}" if made else head


def disambiguated(surfaces: list[Surface], names: list[str], sep: str) -> list[str]:
    """`names` of the files, each prefixed with its folder's name (joined by `sep`) where two
    files share a name."""
    return [f"{s.path.resolve().parent.name}{sep}{n}" if names.count(n) > 1 else n for s, n in zip(surfaces, names)]


def file_names(surfaces: list[Surface]) -> list[str]:
    """The files' names, with their folder's where two share a name: 'a.h5', 'run1/s.h5'."""
    return disambiguated(surfaces, [s.path.name for s in surfaces], "/")


def panel_titles(surfaces: list[Surface], split: str) -> list[str]:
    """Titles of side-by-side panels, told apart by their files: 'a.h5: resnet56 (37% done)'
    (the folder's name added where two files share a name), then what each was made from,
    one part a line, as panels are narrow."""
    titles = []
    for s, name in zip(surfaces, file_names(surfaces)):
        name, model = literal(name), model_label(s)
        head = name if model == s.stem else f"{name}: {literal(model)}"
        titles.append("\n".join([head + done_note(s, split), *provenance(s)]))
    return titles


def value_label(split: str | None, value: str, log: bool = False) -> str:
    label = VALUE_LABELS[value] if split is None else f"{split} {VALUE_LABELS[value]}"
    if value == "acc":
        label += " (%)"
    return label + (" (log scale)" if log else "")


def spec_part(surface: Surface, part: str) -> dict:
    """One table of the file's job spec (the `spec` attribute, JSON), e.g. "model";
    {} when the file records none (the original code's files)."""
    spec = ff.spec_table(surface.attrs.get(ff.A_SPEC))
    table = spec.get(part) if spec else None
    return table if isinstance(table, dict) else {}


def checkpoint_name(surface: Surface, key: str = "checkpoint") -> str | None:
    """File name of `model.<key>`: "fresh initialisation" when empty, None when not recorded."""
    path = spec_part(surface, "model").get(key)
    if not isinstance(path, str):
        return None
    return Path(path).name if path else "fresh initialisation"


def centre_label(surface: Surface) -> str:
    """The legend's name for the centre (0, 0) of the grid."""
    if checkpoint_name(surface) == "fresh initialisation":
        return "fresh initialisation (0, 0)"
    return "trained model (0, 0)"


# How random directions were scaled (directions.norm), in words.
NORM_TEXT = {
    "filter": "filter-normalised",
    "layer": "layer-normalised",
    "weight": "weight-normalised",
    "dfilter": "unit-norm filters",
    "dlayer": "unit-norm layers",
    "none": "not normalised",
}


def provenance(surface: Surface) -> list[str]:
    """What the surface was made from, for titles: the checkpoint and the kind of
    directions, e.g. ["resnet56.pt", "random directions, filter-normalised"].
    Parts the spec does not record are left out; the original code's files
    record none, and say so."""
    if surface.original_format:
        return ["loss-landscape (original code) file"]
    parts = [model_end(surface)]
    d = spec_part(surface, "directions")
    kind = d.get("kind")
    if kind == "random":
        norm = d.get("norm")
        parts.append("random directions" + (f", {NORM_TEXT.get(norm, f'{norm} norm')}" if norm else ""))
    elif kind == "interpolate":
        second = model_end(surface, "checkpoint2") or "checkpoint2"
        third = _third(surface)
        parts.append(f"plane through {second} and {third}" if third else f"interpolation to {second}")
    elif kind == "file":
        parts.append(f"directions from {literal(Path(str(d.get('file', ''))).name) or 'a file'}")
    elif kind == "hessian":
        parts.append("Hessian eigenvector directions")
    elif kind == "pca":
        glob = Path(str(d.get("checkpoints") or "")).name
        parts.append("PCA directions" + (f" of {literal(glob)}" if glob else " of a training run"))
    elif kind:
        parts.append(f"{kind} directions")
    return [p for p in parts if p]


def coord_text(v: float, axis: np.ndarray) -> str:
    """A coordinate in a label: 3 significant digits, float noise around 0 written as 0."""
    if abs(v) <= 1e-9 * float(np.ptp(axis)):
        v = 0.0
    return f"{v + 0.0:.3g}"  # + 0.0 turns -0.0 into 0.0


# Matplotlib mathtext; the HTML page writes them as λ<sub>max</sub> (htmlparts.text).
LAMBDA_MAX = r"$\lambda_{\max}$"
LAMBDA_MIN = r"$\lambda_{\min}$"
RATIO_LABEL = r"$|\lambda_{\min} / \lambda_{\max}|$"


# The Hessian's parameters (the `hessian --params` choice), in words.
PARAMS_TEXT = {"all": "all parameters", "weights": "weight tensors only"}


def eigen_axis(surface: Surface, axis: str) -> str | None:
    """For a surface along Hessian eigenvectors (attribute `hessian_which`): 'eigenvector of
    λ_max = 2.9' (x) or 'of λ_min = -0.05' (y); λ_1, λ_2 for which = "top2". None otherwise."""
    which = surface.attrs.get("hessian_which")
    if which is None:
        return None
    k = 0 if axis == "x" else 1
    if which == "maxmin":
        lam = (LAMBDA_MAX, LAMBDA_MIN)[k]
    else:
        lam = rf"$\lambda_{{{k + 1}}}$"
    eigs = surface.attrs.get("hessian_eigenvalues")
    eigs = eigs if isinstance(eigs, list) else [] if eigs is None else [eigs]
    value = eigs[k] if len(eigs) > k and isinstance(eigs[k], (int, float)) else None
    return f"eigenvector of {lam}" + ("" if value is None else f" = {value:.3g}")


def hessian_setup(settings: dict, parameters: int | None = None) -> str:
    """How a Hessian was taken, for titles: 'Hessian of the mean train loss, 1,000 samples,
    all parameters' (settings: split, samples, params, as the `hessian` verb stores them)."""
    split, samples, params = (settings.get(k) for k in ("split", "samples", "params"))
    parts = [f"Hessian of the mean {split} loss" if split else "Hessian of the mean loss"]
    if samples is not None:
        parts.append(f"{samples:,} samples" if samples else "all samples")
    if params is not None or parameters:
        text = PARAMS_TEXT.get(params, f"{params} parameters") if params is not None else "parameters"
        parts.append(text + (f" ({parameters:,})" if parameters else ""))
    return ", ".join(parts)


def hessian_title(surface: Surface, what: str, settings: dict, fraction: float = 1.0,
                  parameters: int | None = None) -> str:
    """'resnet56: |λmin/λmax| (37% done)', then how the Hessian was taken, then what the
    surface was made from."""
    lines = [f"{literal(model_label(surface))}: {what}{fraction_note(fraction)}", hessian_setup(settings, parameters)]
    made = "; ".join(provenance(surface))
    return "\n".join(lines + ([made] if made else []))


def axis_label(surface: Surface, axis: str) -> str:
    """Label of the x or y axis, by how the directions were made."""
    eigen = eigen_axis(surface, axis)
    if eigen is not None:
        return eigen
    kind = spec_part(surface, "directions").get("kind")
    if kind == "interpolate" and _third(surface):
        # the plane through three models: x runs to model2, y to model3
        key = "checkpoint2" if axis == "x" else "checkpoint3"
        return f"towards {model_end(surface, key)}"
    if kind == "interpolate" and axis == "x":
        return r"interpolation $\alpha$"
    if axis == "y" and spec_part(surface, "directions").get("same_dir"):
        return "y direction (= x direction)"
    if kind == "pca" or surface.explained_variance_ratio is not None:
        # The plane of a trajectory's principal components: "PC1 (87.2%)", its share of the variance.
        k = 0 if axis == "x" else 1
        ratio = surface.explained_variance_ratio
        return f"PC{k + 1}" + ("" if ratio is None or not np.isfinite(ratio[k]) else f" ({percent(ratio[k])})")
    return f"{axis} direction"


def _third(surface: Surface) -> str | None:
    """What pictures call `model.checkpoint3` (the plane through three models, model_end), None
    when unset."""
    path = spec_part(surface, "model").get("checkpoint3")
    return model_end(surface, "checkpoint3") if isinstance(path, str) and path else None


def percent(fraction: float) -> str:
    """A fraction as a percentage for labels: 0.872 -> '87.2%', 0.0004 -> '0.04%', 0 -> '0%'."""
    p = 100 * float(fraction)
    if p == 0:
        return "0%"
    return f"{p:.1f}%" if abs(p) >= 0.1 else f"{p:.1g}%"


def level_format(v: float) -> str:
    """Contour-label text: 3 significant digits, no trailing zeros."""
    return f"{v:.3g}"


def output_path(out_dir: Path, stem: str, *parts: str | None, ext: str) -> Path:
    """`<out_dir>/<stem>_<part>_..._<part>.<ext>`, skipping empty parts."""
    name = "_".join([stem, *(p for p in parts if p)])
    return out_dir / f"{name}.{ext}"


def stems(surfaces: list[Surface]) -> list[str]:
    """Output name stems: the file stem, with its folder's name where two files share a stem."""
    return disambiguated(surfaces, [s.stem for s in surfaces], "_")


def compare_stem(stems: list[str]) -> str:
    """The name stem of a comparison: 'a_vs_b', 'a_vs_b_vs_c', or 'a_vs_3_more' beyond three files."""
    return "_vs_".join(stems) if len(stems) <= 3 else f"{stems[0]}_vs_{len(stems) - 1}_more"


def trace_method(c: dict) -> str:
    """How a centre spectrum's trace was estimated, for a legend or a line: " (Lanczos-deflated
    Hutchinson, 100 products, seed 0)"; a file from before the setting: " (Hutchinson, N probes)"."""
    if c.get("trace_products") is not None:
        method = c.get("trace_method") or "estimate"
        seed = f", seed {c['trace_seed']}" if c.get("trace_seed") is not None else ""
        return f" ({method}, {c['trace_products']} products{seed})"
    if c.get("hutchinson_samples"):
        return f" (Hutchinson, {c['hutchinson_samples']} probes)"
    return " (Hutchinson)"
