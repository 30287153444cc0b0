"""The errors of the Python interface name what its caller passed: the keyword (`train=`,
`model_b`, `split`, `vmin`) or the spec field (`data.max_samples`), never a command-line flag
(`--vmin`, `-v for the traceback`) or a name the interface made up for the spec
(`python:data-a972af65...('train')`, `model.checkpoint2`)."""

from __future__ import annotations

import threading

import pytest
import torch

import losslandscape as ll

X, Y = torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3


def loader(*tensors, **kwargs):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=8, **kwargs)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.l(x)


class Other(Net):
    """Net's keys, another class."""


class Locked(Net):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()  # no deepcopy of it


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2-D surface of Net on train= tensors, and the Net."""
    torch.manual_seed(0)
    net = Net()
    out = tmp_path_factory.mktemp("made") / "s.h5"
    ll.compute_surface(net, train=(X, Y), x="-1:1:3", y="-1:1:3", out=out, device="cpu")
    return out, net


def same_weights(net, cls=Other):
    twin = cls()
    twin.load_state_dict(net.state_dict())
    return twin


def surface(out, **kw):
    return lambda made: ll.compute_surface(kw.pop("model", Net()), x="-1:1:3", out=out, device="cpu", **kw)


CASES = {  # name: (call, the line's start, words in it)
    "shuffled loader": (surface("a.h5", train=loader(X, Y, shuffle=True)),
                        "train: the data given as train= is a DataLoader that shuffles", ["shuffle=False"]),
    "empty loader": (surface("b.h5", test=loader(X[:0], Y[:0])), "test: the data given as test= gave no batch", []),
    "one-element batches": (surface("c.h5", train=(X, Y), test=[(X,)]),
                            "test: the data given as test= gives a batch of 1 element(s)", []),
    "batches of strings": (surface("d.h5", train=["ab", "cd"]),
                           "train: the data given as train= gives a batch that is a str", []),
    "a subset of a plain iterable": (surface("e.h5", train=[(X, Y)], max_samples=5),
                                     "data.max_samples: the data given as train= is a plain iterable", []),
    "the first batch fails": (surface("f.h5", train=(torch.randn(24, 5), Y)),
                              "evaluation: the first batch of train at the centre failed: RuntimeError", ["(at "]),
    "other data on resume": (lambda made: ll.compute_surface(made[1], train=(X + 1, Y), x="-1:1:3", y="-1:1:3",
                                                             out=made[0], device="cpu"),
                             "train: the surface file", ["was made with other data"]),
    "another class on resume": (lambda made: ll.compute_surface(same_weights(made[1]), train=(X, Y), x="-1:1:3",
                                                                y="-1:1:3", out=made[0], device="cpu"),
                                "model: the surface file", ["Net", "Other"]),
    "model_b not a module": (lambda made: ll.interpolate(Net(), "b.pt", train=(X, Y), x="0:1:2", out="g.h5"),
                             "model_b: expected a torch.nn.Module, not str", []),
    "model_b of other keys": (lambda made: ll.interpolate(
        Net(), torch.nn.Sequential(torch.nn.Linear(8, 3)), train=(X, Y), x="0:1:2", out="h.h5"),
        "model_b: does not fit", ["l.weight"]),
    "a model that cannot be copied": (surface("i.h5", model=Locked(), train=(X, Y)),
                                      "model: copy.deepcopy cannot copy it", []),
    "a checkpoint of its own": (surface("j.h5", train=(X, Y), checkpoint="w.pt"),
                                "checkpoint: it is set by compute_surface from the model given", []),
    "a data set's name": (surface("k.h5", train=(X, Y), data={"name": "digits"}),
                          "data: its 'name' is set by compute_surface", []),
    "an unknown keyword": (surface("l.h5", train=(X, Y), zzzzzz=1),
                           "compute_surface: unknown keyword 'zzzzzz'; expected a field of the job spec", []),
    "a split not given": (lambda made: ll.compute_hessian(made[0], split="test", samples=8),
                          "test: asked for, but no test= data was given", []),
    "plot: vmin above vmax": (lambda made: ll.plot(made[0], vmin=2, vmax=1), "vmin 2 is not below vmax 1", []),
    "plot: a log scale below 0": (lambda made: ll.plot(made[0], vmin=-1, log=True),
                                  "vmin is -1, expected a value > 0 with log=True", []),
    "plot: no Hessian maps": (lambda made: ll.plot(made[0], kind="ratio"), "kind: ",
                              ["ll.compute_hessian("]),
    "plot: no spectrum": (lambda made: ll.plot(made[0], kind="spectrum"), "kind: ",
                          ["compute it with ll.compute_hessian(", "centre=True)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_error_names_what_the_caller_passed(made, tmp_path, monkeypatch, case):
    call, start, words = CASES[case]
    monkeypatch.chdir(tmp_path)  # the relative outs
    with pytest.raises(ll.UserError) as err:
        call(made)
    line = str(err.value)
    assert line.startswith(start), line
    assert all(w in line for w in words), line
    for internal in ("--", "-v", "python:", "data-", "checkpoint2", "data.name", "model.name"):
        assert internal not in line, (internal, line)
    assert "\n" not in line
    assert list(tmp_path.iterdir()) == []  # nothing left behind
