"""The evaluator's pieces, each on its own (numerics/weights.py, numerics/evaluate.py): the weight
mover against base + a*dx + b*dy computed here, the one-line failure, the measurer and the probe
against a plain forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losslandscape.errors import UserError
from losslandscape.inputs.batches import Batch
from losslandscape.inputs.losses import get_loss
from losslandscape.numerics.evaluate import Measurer, Precision, failure, network, probe
from losslandscape.numerics.weights import WeightMover


def test_the_mover_sets_base_plus_a_dx_plus_b_dy():
    gen = torch.Generator().manual_seed(1)
    live = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    base = {k: v.clone() for k, v in live.items()}
    dx = {k: torch.randn(v.shape, generator=gen) for k, v in live.items()}
    dy = {k: torch.randn(v.shape, generator=gen) for k, v in live.items()}
    mover = WeightMover(live)
    mover.set_directions(dx, dy)
    for a, b in ((0.5, -0.25), (0.0, 1.0), (-1.0, 0.0), (0.0, 0.0)):
        mover.move_to(a, b)
        for k in live:
            assert torch.allclose(live[k], base[k] + a * dx[k] + b * dy[k], atol=1e-6)
    assert mover.names == ["w", "b"]


def test_the_mover_rounds_bf16_weights_once():
    w = torch.tensor([1.0, 256.0, -3.0]).to(torch.bfloat16)
    base = w.float()
    d = torch.tensor([1e-3, 0.5, 1e-2])
    mover = WeightMover({"w": w})
    mover.set_directions({"w": d}, None)
    for a in (0.4, 0.4, 0.8):  # twice the same point: no drift from adding steps in bf16
        mover.move_to(a)
        assert torch.equal(w, (base + a * d).to(torch.bfloat16))


def test_measurer_and_probe_against_a_plain_forward_pass():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x, y = torch.randn(10, 3, 2, 2), torch.randint(0, 3, (10,))
    measurer = Measurer(model, get_loss("cross_entropy", model), Precision("fp32", torch.device("cpu")), 10)
    with torch.no_grad():
        s, k, c = measurer.sums(Batch((x,), {}, y), "a batch")
        logits = model(x)
    assert float(s) == pytest.approx(float(F.cross_entropy(logits, y, reduction="sum")), rel=1e-6)
    assert int(k) == 10 and int(c) == int((logits.argmax(1) == y).sum())
    assert probe(measurer, {"train": Batch((x,), {}, y)}) == ("loss", "acc")
    net, why = network(model, Batch((x,), {}, y), fold_batchnorm=False)
    assert net is model and "folding off" in why
    net, why = network(model, Batch((), {"input": x}, y), fold_batchnorm=True)
    assert net is model and "not a single input tensor" in why


def test_a_failing_forward_pass_is_one_line_naming_where():
    model = torch.nn.Linear(5, 2)
    measurer = Measurer(model, get_loss("cross_entropy", model), Precision("fp32", torch.device("cpu")), 8)
    with pytest.raises(UserError) as info:
        measurer.sums(Batch((torch.randn(4, 7),), {}, torch.zeros(4, dtype=torch.long)), "the first batch of train")
    line = str(info.value)
    assert line.startswith("evaluation: the first batch of train failed: RuntimeError: ")
    assert "\n" not in line and ".py:" in line and line.endswith("-v for the traceback)")
    oom = failure(torch.cuda.OutOfMemoryError("no room"), "a batch of test", 512)
    assert str(oom) == "evaluation: out of GPU memory on a batch of test; lower evaluation.batch_size (now 512)"
