"""The Python interface on a live model: the same engine, file, values and errors as the command line."""

from __future__ import annotations

import os
import signal
import subprocess

import h5py
import numpy as np
import pytest
import torch

import losslandscape as ll
from losslandscape.inputs import data as datasets
from losslandscape import spec as specs
from losslandscape.inputs.models import build_model

from helpers import BIN

VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")


def live_model(ckpt) -> torch.nn.Module:
    model = build_model("resnet20", in_channels=1)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    return model.train()  # a notebook's model, mid-training: its mode must survive


def digits(split: str, n: int = 120):
    return datasets.load_split(specs.from_dict({"data": {"max_samples": n}}).data, split)


def snapshot(model: torch.nn.Module) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "training": model.training,
            "modes": [m.training for m in model.modules()], "device": next(model.parameters()).device,
            "grad": [p.requires_grad for p in model.parameters()]}


def assert_untouched(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"] and after["modes"] == before["modes"]
    assert after["device"] == before["device"] and after["grad"] == before["grad"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], before["state"][k]) for k in before["state"])


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_the_python_interface_gives_the_command_lines_file(trained, tmp_path):
    model = live_model(trained["final"])
    before = snapshot(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*digits("test")), batch_size=32)
    s = ll.compute_surface(model, train=digits("train"), test=loader, x="-1:1:3", y="-0.5:0.5:2",
                           out=tmp_path / "api.h5", norm="filter", seed=3, evaluation={"device": "cpu"})
    assert_untouched(model, before)
    (tmp_path / "job.toml").write_text(f'''
[model]
name = "resnet20"
checkpoint = "{trained['final']}"
[data]
name = "digits"
splits = ["train", "test"]
max_samples = 120
[directions]
seed = 3
[grid]
x = "-1:1:3"
y = "-0.5:0.5:2"
[evaluation]
device = "cpu"
[output]
surface = "{tmp_path / 'cli.h5'}"
''')
    proc = subprocess.run([str(BIN / "losslandscape"), "surface", str(tmp_path / "job.toml")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "cli.h5", "r") as f:
        for k in VALUES:
            # the test split streams from the DataLoader in its batches of 32, the command line's in
            # batches of 128: the float32 sums differ in their last bits only
            np.testing.assert_allclose(getattr(s, k), f[k][...], rtol=1e-12 if k.startswith("train") else 1e-6,
                                       atol=0)
        np.testing.assert_array_equal(s.x, f["xcoordinates"][...])
        np.testing.assert_array_equal(s.y, f["ycoordinates"][...])
        cli_dirs = {k: f["directions/x"][k][...] for k in f["directions/x"]}
    with h5py.File(tmp_path / "api.h5", "r") as f:
        for k, v in cli_dirs.items():
            np.testing.assert_array_equal(f["directions/x"][k][...], v)
    assert ll.open_surface(tmp_path / "api.h5").fraction_done == {"train": 1.0, "test": 1.0}


class CtrlC(torch.nn.Module):
    """A small model whose k-th forward pass presses Ctrl-C (SIGINT to this process), as a user would."""

    def __init__(self, k: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.k, self.calls = k, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.k:
            os.kill(os.getpid(), signal.SIGINT)
        return self.net(x)


def test_an_interrupted_call_resumes_and_a_mismatched_one_is_refused(trained, tmp_path):
    torch.manual_seed(0)
    model = CtrlC(k=12)  # 1 pass checks folding, then 1 per point: stopped after about 11 points
    out = tmp_path / "s.h5"
    kw = dict(train=digits("train", 100), x="-1:1:9", y="-1:1:9", out=out, unit_size=1, device="cpu")
    with pytest.raises(KeyboardInterrupt) as stopped:  # after the file is closed (tests/test_api_interrupt.py)
        ll.compute_surface(model, **kw)
    partial = stopped.value.surface
    assert 0 < partial.fraction_done["train"] < 1
    model.k = 0  # released
    whole = ll.compute_surface(model, **kw)
    assert whole.fraction_done["train"] == 1.0
    computed = ~np.isnan(partial.train_loss)
    np.testing.assert_array_equal(whole.train_loss[computed], partial.train_loss[computed])
    with pytest.raises(ll.UserError, match=r"^directions.seed: the surface file .* was made with 0, this spec gives 1"):
        ll.compute_surface(model, **{**kw, "seed": 1})
    other = CtrlC(k=0)
    with pytest.raises(ll.UserError, match="these weights are not the ones"):
        ll.compute_surface(other, **kw)


@pytest.mark.parametrize("kwargs, message", [
    ({"nrom": "filter"}, "unknown keyword 'nrom'; did you mean norm?"),
    ({"norm": "filtr"}, "directions.norm: 'filtr' is not valid; expected one of filter"),
    ({"x": "1:0:3"}, "grid.x: '1:0:3' is not valid"),
    ({"train": None}, "no data"),
])
def test_keywords_are_spec_fields_with_the_same_errors(trained, tmp_path, kwargs, message):
    args = {"train": digits("train", 50), "x": "-1:1:3", "out": tmp_path / "s.h5", **kwargs}
    with pytest.raises(ll.UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
        ll.compute_surface(live_model(trained["final"]), **args)
    assert not (tmp_path / "s.h5").exists()


def test_interpolate_ends_at_the_two_models(trained, tmp_path):
    a, b = live_model(trained["init"]), live_model(trained["final"])
    s = ll.interpolate(a, b, test=digits("test"), x="0:1:2", out=tmp_path / "i.h5", device="cpu")
    for i, model in ((0, a), (1, b)):
        x, y = digits("test")
        with torch.no_grad():
            want = torch.nn.functional.cross_entropy(model.eval()(x).double(), y).item()
        assert s.test_loss[i] == pytest.approx(want, rel=1e-5)


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_plot_returns_a_figure_of_the_surface(trained, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    s = ll.compute_surface(live_model(trained["final"]), train=digits("train", 60), x="-1:1:5", y="-1:1:5",
                           out=tmp_path / "s.h5", device="cpu")
    for kind in ("contour", "filled", "heatmap", "surface3d"):
        fig = ll.plot(s, kind=kind)
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
        assert "train loss" in " ".join(ax.get_title() for ax in fig.axes)
    fig = ll.plot(tmp_path / "s.h5", kind="contour", value="acc")
    assert "train accuracy" in " ".join(ax.get_title() for ax in fig.axes)
    with pytest.raises(ll.UserError, match="kind: 'curve' does not fit"):
        ll.plot(s, kind="curve")


def test_open_surface_gives_arrays_and_an_xarray_dataset(trained, tmp_path):
    ll.compute_surface(live_model(trained["final"]), train=digits("train", 60), x="-1:1:3", y="-1:1:5",
                       out=tmp_path / "s.h5", device="cpu")
    s = ll.open_surface(tmp_path / "s.h5")
    assert s.train_loss.shape == (5, 3) and s.x.shape == (3,) and s.y.shape == (5,)
    ds = s.to_xarray()
    assert ds["train_loss"].dims == ("y", "x")
    np.testing.assert_array_equal(ds["train_loss"].sel(x=0.0, y=0.5).item(), s.train_loss[3, 1])
    assert np.isnan(s.test_loss).all()  # a split not asked for: nothing computed


def test_a_notebook_gets_a_progress_bar(trained, tmp_path, monkeypatch, capsys):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # as inside Jupyter
    ll.compute_surface(live_model(trained["final"]), train=digits("train", 30), x="-1:1:3",
                       out=tmp_path / "s.h5", device="cpu")
    err = capsys.readouterr().err
    assert "surface: 100%" in err and "3/3" in err, err



@pytest.mark.slow  # a trajectory and Hessian maps
def test_trajectories_and_hessian_maps_from_python(trained, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    run = tmp_path / "run"
    run.mkdir()
    for t in range(4):  # a tiny run's checkpoints, as a notebook would save them
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(net.state_dict(), run / f"model_{t}.pt")
    s = ll.compute_trajectory(net, str(run / "model_*.pt"), train=digits("train", 40), x="-1:1:3", y="-1:1:3",
                      out=tmp_path / "t.h5", device="cpu")
    assert s.fraction_done["train"] == 1.0
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["trajectory/x"].shape == (4,) and f["trajectory/x"][-1] == 0.0
    m = ll.compute_hessian(tmp_path / "t.h5", samples=40)  # its values against dense Hessians: test_api_numbers.py
    centre = ll.compute_hessian(tmp_path / "t.h5", samples=40, centre=True, top_k=2)
    assert centre["top_eigenvalues"][0] == pytest.approx(m.eig["max"][1, 1], rel=1e-2)
