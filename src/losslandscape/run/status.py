"""Progress of a surface file and of its SLURM submission, torch-free: points done and
pending per split, the values it holds (loss and accuracy, or loss alone where the run's loss
defines no accuracy), shard files not merged yet, jobs still queued, an ETA.

It reads files read-only without locking, so it works on a file a job is writing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.cluster import SqueueFailed, queued, running_tasks
from losslandscape.errors import UserError
from losslandscape.surfacefile.format import read_submission, shard_files
from losslandscape.surfacefile.read import read_progress


def missing_points(surface_path: Path) -> dict[str, int]:
    """Points not done, per split that the surface's spec asks for."""
    p = read_progress(surface_path)
    return {s: int((~p.done[s]).sum()) for s in p.splits}


def parallel_models(submission: dict, running: int | None) -> int:
    """The copies of the model evaluating points at once, which the ETA divides by: the array
    tasks in RUNNING state (None: not an array job, one) x their workers' groups
    (ranks_per_task - 1 workers, ranks_per_model of them sharing one model)."""
    if running is None:
        return 1
    workers = max(1, submission.get("ranks_per_task", 1) - 1)
    return running * max(1, workers // max(1, submission.get("ranks_per_model") or 1))


def status(surface_path: Path) -> dict:
    """Progress of a surface and its shards, with an ETA from the recorded point timings."""
    surface_path = Path(surface_path)
    progress = read_progress(surface_path)
    splits, values, done, total, seconds = (progress.splits, progress.values, progress.done, progress.total,
                                            progress.seconds)
    hessian = None
    if progress.eig_done is not None:  # the `hessian` verb's maps
        eig = int(progress.eig_done.sum())
        hessian = {"done": eig, "pending": total - eig,
                   **{k.removeprefix("hessian_"): v for k, v in progress.eig_settings.items() if k != "hessian_tol"}}
    complete = np.logical_and.reduce([done[s] for s in splits])
    report = {"surface": str(surface_path), "points": total, "values": list(values),
              "splits": {s: {"done": int(done[s].sum()), "pending": int((~done[s]).sum())} for s in splits},
              "shards": []}
    if hessian is not None:
        report["hessian"] = hessian
    timings = list(seconds[np.isfinite(seconds)])
    in_shards = np.zeros(total, dtype=bool)
    for path in shard_files(surface_path):
        sh = read_progress(path, shard=True)
        if sh.total != total:
            raise UserError(f"status: shard {path} has {sh.total} points, its surface {total}; it belongs to "
                            "another surface (move it away)")
        points, sec = sh.points, sh.seconds
        sh_complete = np.logical_and.reduce([sh.done[s] for s in splits])
        timings.extend(sec[np.isfinite(sec)])
        unmerged = sh_complete & ~complete
        in_shards |= unmerged
        report["shards"].append({"file": path.name, "assigned": int(len(points)),
                                 "done": int(sh_complete[points].sum()), "not_merged": int(unmerged.sum())})
    remaining = int((~complete & ~in_shards).sum())
    sub = read_submission(surface_path)
    running = running_tasks(sub["array_job"]) if sub.get("array_job") and report["shards"] else None
    workers = parallel_models(sub, running)
    per_point = float(np.mean(timings)) if timings else None
    report.update(remaining=remaining, seconds_per_point=per_point, parallel_workers=workers,
                  running_tasks=running,
                  eta_seconds=(remaining * per_point / workers) if per_point is not None and workers else None)
    if sub.get("array_job"):
        jobs = [j for j in (sub["array_job"], sub.get("merge_job")) if j]
        try:
            still = queued(jobs)
        except SqueueFailed:
            still = None  # unknown: shown as such
        report["jobs"] = {"array": sub["array_job"], "merge": sub.get("merge_job"), "queued": still}
    return report


def format_status(report: dict) -> str:
    lines = [f"{report['surface']}: {report['points']} grid points"
             + ("" if "acc" in report.get("values", ["acc"]) else " (loss only: the loss defines no accuracy)")]
    for split, c in report["splits"].items():
        lines.append(f"  {split:<5} {c['done']:>7} done  {c['pending']:>7} pending")
    if report.get("hessian"):
        h = report["hessian"]
        lines.append(f"  hessian maps {h['done']:>5} done  {h['pending']:>7} pending ({h['split']} split, "
                     f"{h['samples'] or 'all'} samples, {h['params']} parameters)")
    for sh in report["shards"]:
        lines.append(f"  shard {sh['file']:<14} {sh['done']:>6}/{sh['assigned']:<6} done, {sh['not_merged']} not merged yet")
    if report.get("jobs"):
        j = report["jobs"]
        still = "unknown (squeue failed)" if j["queued"] is None else ", ".join(j["queued"]) or "none"
        lines.append(f"  jobs: array {j['array']}, merge {j['merge']}; still queued: {still}")
    if report["remaining"] == 0:
        lines.append("  nothing left to compute" + (" (run `losslandscape merge`)" if any(
            s["not_merged"] for s in report["shards"]) else ""))
    elif report.get("running_tasks") == 0:
        lines.append(f"  {report['remaining']} points left; no array task is running now (queued, or "
                     "ended: `losslandscape merge`, then `submit` again for what is missing)")
    elif report["eta_seconds"] is not None:
        eta = int(report["eta_seconds"])
        lines.append(f"  {report['remaining']} points left, {report['seconds_per_point']:.2f} s/point, "
                     f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d} with {report['parallel_workers']} worker(s)")
    else:
        lines.append(f"  {report['remaining']} points left; no timings recorded yet")
    return "\n".join(lines)

