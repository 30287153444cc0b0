"""The log's line on the moved set (issue 30, item 9): under directions.ignore = "biasbn" the 1-D
tensors get a zero direction, so the line says how many tensors and parameters move and how
many `ignore` holds, counted here independently from the model's own tensors."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

import losslandscape as ll

LOGGER = "losslandscape.run.makedirections"


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(12, 1, 8, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen)


def moving_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and "moving" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def numbers(line: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line)]


def count(tensors) -> tuple[int, int]:
    tensors = list(tensors)
    return len(tensors), sum(t.numel() for t in tensors)


@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_the_line_says_how_many_move_and_how_many_ignore_holds(tmp_path, caplog, dir_type):
    m = model()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ll.compute_surface(m, data(), x="-1:1:3", out=tmp_path / "s.h5", threads=1, dir_type=dir_type)
    line = moving_line(caplog)
    every = (dict(m.named_parameters()) if dir_type == "weights"
             else {k: t for k, t in m.state_dict().items() if t.is_floating_point()})
    moves, held = [t for t in every.values() if t.dim() > 1], [t for t in every.values() if t.dim() <= 1]
    (n_moves, p_moves), (n_all, p_all), (n_held, p_held) = count(moves), count(every.values()), count(held)
    assert n_held == (4 if dir_type == "weights" else 6) and n_moves == 2  # the case is what it means to be
    assert line.startswith(f"moving {n_moves} of {n_all} tensors, {p_moves:,} of {p_all:,} parameters ("), line
    assert f'directions.ignore = "biasbn" holds the other {n_held}, {p_held:,} parameters' in line, line
    assert numbers(line) == [n_moves, n_all, p_moves, p_all, n_held, p_held], line


def test_without_ignore_every_selected_tensor_moves(tmp_path, caplog):
    m = model()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ll.compute_surface(m, data(), x="-1:1:3", out=tmp_path / "s.h5", threads=1, ignore="none",
                           exclude=["1.*"])
    n, p = count(t for k, t in m.named_parameters() if not k.startswith("1."))
    assert moving_line(caplog) == f"moving {n} tensors, {p:,} parameters (exclude ['1.*'])"


def test_ignore_holds_nothing_on_a_line_between_two_models(tmp_path, caplog):
    """An interpolation moves every tensor toward the other model, 1-D ones too: ignore has no part."""
    a, b = model(), model()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ll.interpolate(a, b, data(), x="0:1:2", out=tmp_path / "i.h5", threads=1, dir_type="weights")
    n, p = count(a.parameters())
    assert moving_line(caplog) == f"moving {n} tensors, {p:,} parameters (every parameter)"
