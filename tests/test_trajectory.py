"""PCA of a training trajectory: checked against independent computations (numpy, sklearn) on files."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from losslandscape.numerics import trajectory
from losslandscape.errors import UserError
from losslandscape.numerics.trajectory import checkpoint_paths, pca_directions, pca_names, project

STEPS = [0, 1, 2, 3, 5, 10, 11]  # model_10 sorts before model_2 by name


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))


def params(model) -> list[str]:
    return [k for k, _ in model.named_parameters()]


def vec(state: dict, names: list[str]) -> np.ndarray:
    return np.concatenate([state[k].detach().double().reshape(-1).numpy() for k in names])


def unvec(v: np.ndarray, like: dict, names: list[str]) -> dict:
    out, i = {}, 0
    for k in names:
        n = like[k].numel()
        out[k] = torch.from_numpy(v[i:i + n]).reshape(like[k].shape).float()
        i += n
    return out


def save(path, final: dict, moved: dict, seed: int) -> None:
    """final with `moved` entries replaced, the other floating entries jittered (outside the PCA)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, t in final.items():
        if k in moved:
            state[k] = moved[k].clone()
        elif t.is_floating_point():
            state[k] = t + 0.3 * torch.randn(t.shape, generator=gen)
        else:
            state[k] = t.clone()
    torch.save({"state_dict": state, "epoch": seed}, path)


def load_diffs(paths, final, names) -> np.ndarray:
    return np.stack([vec(torch.load(p, weights_only=True)["state_dict"], names) - vec(final, names) for p in paths])


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = pca_names(model, "weights", "biasbn")
    return model, final, names


@pytest.fixture(scope="module")
def plane(setup, tmp_path_factory):
    """Checkpoints final + a_t u + c_t v (exactly on a plane), saved as model_<t>.pt."""
    model, final, names = setup
    rng = np.random.default_rng(1)
    size = vec(final, names).size
    u, v = rng.normal(size=size), rng.normal(size=size)
    v += 0.4 * u  # not orthogonal
    coords = rng.normal(size=(len(STEPS), 2)) * [2.0, 0.7]
    out = tmp_path_factory.mktemp("plane")
    f = vec(final, names)
    for (a, c), t in zip(coords, STEPS):
        save(out / f"model_{t}.pt", final, unvec(f + a * u + c * v, final, names), seed=t)
    return out, u, v, coords


def test_pca_names(setup):
    model, final, names = setup
    assert names == ["0.weight", "4.weight"]
    assert pca_names(model, "weights", "") == params(model)
    states = pca_names(model, "states", "")
    assert "1.running_mean" in states and "1.num_batches_tracked" not in states
    assert pca_names(final, "states", "biasbn") == ["0.weight", "4.weight"]
    with pytest.raises(ValueError):
        pca_names(model, "weights", "bias")


def test_checkpoint_paths_ordered_by_number(plane):
    out = plane[0]
    paths = checkpoint_paths(str(out / "model_*.pt"), "trajectory.checkpoints")
    assert [p.name for p in paths] == [f"model_{t}.pt" for t in STEPS]


def test_plane_is_recovered(setup, plane):
    model, final, names = setup
    out, u, v, _ = plane
    paths = checkpoint_paths(str(out / "model_*.pt"), "f")
    seen = []
    res = pca_directions(final, paths, names, field='f', targets=params(model), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i + 1, len(STEPS)) for i in range(len(STEPS))]
    assert res.paths == paths and list(res.d1) == params(model)
    for d in (res.d1, res.d2):
        assert all(t.dtype == torch.float32 for t in d.values())
        assert all(not d[k].any() for k in params(model) if k not in names)  # biases: zero
    d1, d2 = vec(res.d1, names), vec(res.d2, names)
    assert abs(d1 @ d1 - 1) < 1e-6 and abs(d2 @ d2 - 1) < 1e-6 and abs(d1 @ d2) < 1e-6
    basis = np.stack([d1, d2])
    for w in (u, v):  # u and v lie in span(d1, d2)
        assert np.linalg.norm(basis @ w) == pytest.approx(np.linalg.norm(w), rel=1e-5)
    diffs = load_diffs(paths, final, names)
    for t, D in enumerate(diffs):
        assert res.x[t] == pytest.approx(D @ d1, rel=1e-6, abs=1e-9)
        assert res.y[t] == pytest.approx(D @ d2, rel=1e-6, abs=1e-9)
        recon = res.x[t] * d1 + res.y[t] * d2  # final + x d1 + y d2 is the checkpoint
        assert np.linalg.norm(recon - D) <= 1e-5 * np.linalg.norm(D)
    assert res.error.max() < 1e-5
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-6)
    # the earliest checkpoint sits in the positive quadrant (our sign convention)
    assert res.x[0] > 0 and res.y[0] > 0
    # project() on the same plane gives the same numbers
    x, y, err = project(final, paths, names, res.d1, res.d2, field='f')
    np.testing.assert_allclose(x, res.x, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(y, res.y, rtol=1e-5, atol=1e-8)
    assert err.max() < 1e-5


def test_off_plane_error_and_final_in_trajectory(setup, plane, tmp_path):
    model, final, names = setup
    out, u, v, coords = plane
    rng = np.random.default_rng(2)
    f = vec(final, names)
    for (a, c), t in zip(coords, STEPS):
        w = 0.3 * rng.normal(size=f.size) if t == 3 else 0.0
        save(tmp_path / f"model_{t}.pt", final, unvec(f + a * u + c * v + w, final, names), seed=t)
    save(tmp_path / "model_12.pt", final, {k: final[k] for k in names}, seed=12)  # the final model itself
    paths = checkpoint_paths(str(tmp_path / "model_*.pt"), "f")
    res = pca_directions(final, paths, names, field='f')
    # independently: sklearn's plane, residuals in float64
    diffs = load_diffs(paths, final, names)
    comps = PCA(n_components=2).fit(diffs).components_
    resid = diffs - (diffs @ comps.T) @ comps
    norms = np.linalg.norm(diffs, axis=1)
    expected = np.where(norms > 0, np.linalg.norm(resid, axis=1) / np.where(norms > 0, norms, 1), 0)
    np.testing.assert_allclose(res.error, expected, atol=1e-6)
    assert res.error[STEPS.index(3)] > 0.01  # it is off the plane ...
    assert res.x[-1] == 0 and res.y[-1] == 0 and res.error[-1] == 0  # ... the final model at the origin
    x, y, err = project(final, paths, names, res.d1, res.d2, field='f')
    np.testing.assert_allclose(err, expected, atol=1e-6)


def test_matches_sklearn_pca(setup, tmp_path):
    model, final, names = setup
    rng = np.random.default_rng(3)
    f = vec(final, names)
    walk = f + np.cumsum(rng.normal(size=(12, f.size)) * np.linspace(1, 0.1, f.size), axis=0)
    walk[:, :5] += np.arange(12)[:, None] * 0.5  # a dominant drift
    for t, w in enumerate(walk):
        save(tmp_path / f"model_{t}.pt", final, unvec(w, final, names), seed=t)
    paths = checkpoint_paths(str(tmp_path / "model_*.pt"), "f")
    res = pca_directions(final, paths, names, field='f')
    diffs = load_diffs(paths, final, names)
    pca = PCA(n_components=2).fit(diffs)
    for k, d in enumerate((res.d1, res.d2)):
        dv = vec(d, names)
        sign = np.sign(dv @ pca.components_[k])
        np.testing.assert_allclose(dv, sign * pca.components_[k], atol=1e-6)
    np.testing.assert_allclose(res.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(res.explained_variance, pca.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(res.singular_values, pca.singular_values_, rtol=1e-6)
    # uncentred coordinates
    np.testing.assert_allclose(res.x, diffs @ vec(res.d1, names), rtol=1e-5, atol=1e-8)


def test_two_checkpoints_span_the_plane_with_the_final_model(setup, tmp_path):
    model, final, names = setup
    rng = np.random.default_rng(4)
    f = vec(final, names)
    for t in (0, 1):
        save(tmp_path / f"model_{t}.pt", final, unvec(f + rng.normal(size=f.size), final, names), seed=t)
    res = pca_directions(final, checkpoint_paths(str(tmp_path / "*.pt"), "f"), names, field='f')
    assert res.error.max() < 1e-5
    assert res.explained_variance_ratio[1] == 0
    d1, d2 = vec(res.d1, names), vec(res.d2, names)
    assert abs(d1 @ d2) < 1e-6 and abs(d2 @ d2 - 1) < 1e-6


class Tracked(dict):
    """A loaded state dict whose lifetime the test can follow."""


def test_memory_one_checkpoint_at_a_time(tmp_path, monkeypatch):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(1000, 1000))
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = pca_names(model, "weights", "biasbn")
    ckpt_bytes = sum(final[k].numel() for k in names) * 4  # ~4 MB
    gen = torch.Generator().manual_seed(6)
    for t in range(20):
        torch.save({"state_dict": {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in final.items()}},
                   tmp_path / f"model_{t}.pt")
    paths = checkpoint_paths(str(tmp_path / "model_*.pt"), "f")

    counts = {"loads": 0, "live": 0, "peak": 0}
    real = trajectory.load_state_dict

    def gone():
        counts["live"] -= 1

    def load(*args, **kwargs):
        import weakref

        state = Tracked(real(*args, **kwargs))
        counts["loads"] += 1
        counts["live"] += 1
        counts["peak"] = max(counts["peak"], counts["live"])
        weakref.finalize(state, gone)
        return state

    monkeypatch.setattr(trajectory, "load_state_dict", load)
    tracemalloc.start()
    try:
        res = pca_directions(final, paths, names, field='f', tmpdir=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts["loads"] == 20 and counts["peak"] == 1 and counts["live"] == 0
    assert peak < 2 * ckpt_bytes, (peak, ckpt_bytes)  # numpy buffers: a row, then a column block (~1.2 measured)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # temp file gone
    counts.update(loads=0, peak=0)
    project(final, paths, names, res.d1, res.d2, field='f')
    assert counts["loads"] == 20 and counts["peak"] == 1


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_checkpoint_paths_errors(tmp_path):
    with pytest.raises(UserError) as e:
        checkpoint_paths(str(tmp_path / "model_*.pt"), "trajectory.checkpoints")
    assert "trajectory.checkpoints" in one_line(e) and "model_*.pt" in one_line(e)
    (tmp_path / "model_1.pt").write_bytes(b"x")
    with pytest.raises(UserError) as e:
        checkpoint_paths(str(tmp_path / "model_*.pt"), "traj")
    assert one_line(e).startswith("traj:") and "one checkpoint" in one_line(e)
    (tmp_path / "model_final.pt").write_bytes(b"x")
    with pytest.raises(UserError) as e:
        checkpoint_paths(str(tmp_path / "model_*.pt"), "traj")
    assert "model_final.pt" in one_line(e) and "no number" in one_line(e)


def test_bad_checkpoints(setup, plane, tmp_path):
    model, final, names = setup
    out = plane[0]
    good = checkpoint_paths(str(out / "model_*.pt"), "f")[:3]
    with pytest.raises(UserError) as e:
        pca_directions(final, good[:1], names, field="traj")
    assert one_line(e).startswith("traj:") and "at least 2" in one_line(e)

    other = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 7))
    torch.save({"state_dict": other.state_dict()}, tmp_path / "model_7.pt")
    with pytest.raises(UserError) as e:
        pca_directions(final, good + [tmp_path / "model_7.pt"], names, field="traj")
    assert "model_7.pt" in one_line(e) and "'4.weight'" in one_line(e) and "(7, 64)" in one_line(e)

    missing = {k: v for k, v in final.items() if k != "4.weight"}
    torch.save(missing, tmp_path / "model_8.pt")
    with pytest.raises(UserError) as e:
        pca_directions(final, good + [tmp_path / "model_8.pt"], names, field="traj")
    assert "model_8.pt" in one_line(e) and "no entry '4.weight'" in one_line(e)
    with pytest.raises(UserError) as e:
        res = pca_directions(final, good, names, field='f')
        project(final, [tmp_path / "model_8.pt"], names, res.d1, res.d2, field="traj")
    assert "no entry '4.weight'" in one_line(e)

    (tmp_path / "model_9.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "model_13.pt").write_bytes(b"")
    for bad in ("model_9.pt", "model_13.pt", "model_99.pt"):
        with pytest.raises(UserError) as e:
            pca_directions(final, good + [tmp_path / bad], names, field="traj")
        assert one_line(e).startswith("traj:") and bad in one_line(e)

    nan = {k: v.clone() for k, v in final.items()}
    nan["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, tmp_path / "model_10.pt")
    with pytest.raises(UserError) as e:
        pca_directions(final, good + [tmp_path / "model_10.pt"], names, field="traj")
    assert "NaN" in one_line(e) and "model_10.pt" in one_line(e)


def test_degenerate_trajectories(setup, tmp_path):
    model, final, names = setup
    f = vec(final, names)
    u = np.random.default_rng(7).normal(size=f.size)
    for t in range(3):
        save(tmp_path / f"same_{t}.pt", final, unvec(f + u, final, names), seed=t)
        save(tmp_path / f"line_{t}.pt", final, unvec(f + (t + 1) * u, final, names), seed=t)
    with pytest.raises(UserError) as e:
        pca_directions(final, checkpoint_paths(str(tmp_path / "same_*.pt"), "f"), names, field="traj")
    assert "same model" in one_line(e)
    with pytest.raises(UserError) as e:
        pca_directions(final, checkpoint_paths(str(tmp_path / "line_*.pt"), "f"), names, field="traj")
    assert "one line" in one_line(e)
    d = unvec(u, final, names)
    with pytest.raises(UserError) as e:
        project(final, checkpoint_paths(str(tmp_path / "line_*.pt"), "f"), names, d, d, field="traj")
    assert "parallel" in one_line(e)
