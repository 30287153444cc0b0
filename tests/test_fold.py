"""BatchNorm folding: the folded twin computes what the model computes, also after moves."""

from __future__ import annotations

import pytest
import torch

from losslandscape.numerics.fold import FoldedModel, fold
from losslandscape.inputs.models import build_model


def randomised(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1).eval()
    for m in model.modules():  # fresh BatchNorm is the identity: give it real statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("name", ["resnet20", "resnet20_noshort", "vgg9"])
def test_folded_twin_matches_the_model_before_and_after_a_move(name):
    model = randomised(name)
    x = torch.randn(6, 1, 8, 8)
    twin, _ = fold(model, x)
    assert isinstance(twin, FoldedModel) and len(twin.pairs) > 0
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-4)
    # move every weight and statistic (as a "states" direction does), then refresh
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t).abs() if t.dim() == 1 else 0.05 * torch.randn_like(t))
    twin.refresh()
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-4)
    x0 = x.clone()
    with torch.inference_mode():
        twin(x)
    assert torch.equal(x, x0), "in-place ReLUs must never touch the input"


def test_untraceable_model_is_used_unfolded():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x)).mean((2, 3))
            return self.conv(x).mean((2, 3))

    model = Branchy().eval()
    assert fold(model, torch.randn(2, 1, 8, 8))[0] is model
