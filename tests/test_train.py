"""The trainer: resnet20 on digits learns, and writes checkpoints that a plain torch.load reads."""

import pytest
import torch

from losslandscape.inputs import data
from losslandscape import spec as specs
from losslandscape.inputs.models import build_model
from losslandscape.numerics.train import evaluate, learning_rate, train

EPOCHS = 3
SAVE_EVERY = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    spec = specs.from_dict({
        "model": {"name": "resnet20"},
        "data": {"name": "digits"},
        "evaluation": {"device": "cpu"},
        "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.1, "lr_steps": [2], "save_every": SAVE_EVERY,
                  "out_dir": str(out), "seed": 0},
    })
    return out, train(spec)


def accuracy_by_hand(state: dict) -> float:
    """Percent of the digits test split that a fresh resnet20 with `state` classifies correctly."""
    model = build_model("resnet20", in_channels=1)
    model.load_state_dict(state, strict=True)
    model.eval()
    x, y = data.load_split(specs.Data(name="digits"), "test")
    with torch.no_grad():
        predicted = torch.cat([model(x[i:i + 128]).argmax(1) for i in range(0, len(y), 128)])
    return 100.0 * (predicted == y).float().mean().item()


def test_writes_the_initialisation_every_save_every_epochs_and_the_last(run):
    out, written = run
    expected = [0, *range(SAVE_EVERY, EPOCHS + 1, SAVE_EVERY)]
    if EPOCHS % SAVE_EVERY:
        expected.append(EPOCHS)
    assert written == [out / f"model_{e}.pt" for e in expected]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"model_{e}.pt" for e in expected)  # no .tmp left
    for epoch, path in zip(expected, written):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] == epoch
        assert set(ckpt["state_dict"]) == set(build_model("resnet20", in_channels=1).state_dict())


def test_final_checkpoint_classifies_the_test_split(run):
    _, written = run
    final = torch.load(written[-1], map_location="cpu", weights_only=True)
    acc = accuracy_by_hand(final["state_dict"])
    assert acc > 90.0
    # the accuracy the trainer stored is the one measured here
    assert final["test_acc"] == pytest.approx(acc, abs=0.5)  # one image of 359 is 0.28%


def test_the_initialisation_is_untrained_and_seeded(run):
    _, written = run
    init = torch.load(written[0], map_location="cpu", weights_only=True)["state_dict"]
    assert accuracy_by_hand(init) < 40.0
    torch.manual_seed(0)
    again = build_model("resnet20", in_channels=1).state_dict()
    assert all(torch.equal(init[k], again[k]) for k in again)


def test_evaluate_matches_a_hand_computation():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1).eval()
    x = torch.randn(10, 1, 8, 8)
    y = torch.arange(10) % 10
    with torch.no_grad():
        logits = model(x)
    loss, acc = evaluate(model, x, y, batch_size=3)
    log_p = logits.log_softmax(1)
    assert loss == pytest.approx(-log_p[torch.arange(10), y].mean().item(), rel=1e-5)
    assert acc == pytest.approx(100.0 * (logits.argmax(1) == y).sum().item() / 10)


def test_the_learning_rate_warms_up_linearly_then_steps():
    cfg = specs.Train(lr=0.1, lr_steps=[3], lr_gamma=0.1, warmup_epochs=2)
    # 4 minibatches an epoch: 8 warm-up steps of 0.1 * (k + 1) / 8
    lrs = [learning_rate(cfg, 1 + s // 4, s, 4) for s in range(16)]
    assert lrs[:8] == pytest.approx([0.1 * (k + 1) / 8 for k in range(8)])
    assert lrs[8:12] == pytest.approx([0.1] * 4)  # epoch 3
    assert lrs[12:] == pytest.approx([0.01] * 4)  # epoch 4, after the step at 3
    assert learning_rate(specs.Train(lr=0.1, warmup_epochs=0, lr_steps=[]), 1, 0, 4) == 0.1


def test_training_uses_the_warm_up(tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    spec = specs.from_dict({
        "model": {"name": "resnet20"},
        "data": {"name": "digits", "max_samples": 256},
        "evaluation": {"device": "cpu"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "lr_steps": [], "warmup_epochs": 1,
                  "out_dir": str(tmp_path), "seed": 0},
    })
    train(spec)
    assert seen == pytest.approx([0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05, 0.05, 0.05])
