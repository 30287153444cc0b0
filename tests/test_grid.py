"""The order in which grid points are computed (coarse to fine) and the work split."""

from __future__ import annotations

import numpy as np
import pytest

from losslandscape.numerics.grid import assign_tasks, coarse_to_fine, levels, split_units

SIZES = range(2, 102)


def shapes():
    for n in SIZES:
        yield (n,)
        yield (n, n)
        yield (n, 3)
        yield (2, n)
        yield (n, 1)


def corners(shape: tuple[int, ...]) -> set[int]:
    ends = [sorted({0, n - 1}) for n in shape]
    if len(shape) == 1:
        return set(ends[0])
    return {j * shape[1] + i for j in ends[0] for i in ends[1]}


def test_every_grid_starts_with_its_corners_and_is_a_permutation():
    for shape in shapes():
        order = coarse_to_fine(shape)
        level = levels(shape)
        size = int(np.prod(shape))
        assert order.dtype == np.int64 and level.shape == (size,)
        assert np.array_equal(np.sort(order), np.arange(size)), shape
        first = set(np.flatnonzero(level == 0).tolist())
        assert first == corners(shape), shape
        assert set(order[:len(first)].tolist()) == first, shape
        assert np.all(np.diff(level[order]) >= 0), shape


def test_within_a_level_the_order_is_row_major():
    for shape in [(7,), (9, 9), (6, 11)]:
        order, level = coarse_to_fine(shape), levels(shape)
        for k in np.unique(level):
            at_k = order[level[order] == k]
            assert np.all(np.diff(at_k) > 0)


def test_the_centre_of_an_odd_axis_comes_at_level_1():
    for n in range(3, 102, 2):
        c = (n - 1) // 2
        assert levels((n,))[c] == 1
        assert levels((n, n))[c * n + c] == 1
    # at 51x51 the corners come first, then {0, 25, 50}^2 completes with the centre (the trained model)
    order = coarse_to_fine((51, 51))
    assert set(order[:4].tolist()) == {0, 50, 2550, 2600}
    assert set(order[:9].tolist()) == {j * 51 + i for j in (0, 25, 50) for i in (0, 25, 50)}
    assert 25 * 51 + 25 in order[:9].tolist()


def test_each_level_is_a_bisection_of_the_previous_one():
    for n in [2, 3, 4, 5, 10, 17, 51, 100]:
        level = levels((n,))
        for k in range(1, int(level.max()) + 1):
            want = {int((2 * j * (n - 1) + 2**k) // 2 ** (k + 1)) for j in range(2**k + 1)}
            assert set(np.flatnonzero(level <= k).tolist()) == want


def test_a_single_point_and_bad_shapes():
    assert coarse_to_fine((1,)).tolist() == [0]
    assert coarse_to_fine((1, 1)).tolist() == [0]
    with pytest.raises(ValueError):
        levels((2, 2, 2))
    with pytest.raises(ValueError):
        levels((0,))


@pytest.mark.parametrize("shape", [(1,), (7,), (51,), (5, 5), (3, 8), (51, 51)])
@pytest.mark.parametrize("unit, tasks", [(1, 1), (3, 2), (4, 7), (16, 3)])
def test_work_split_assigns_every_point_exactly_once(shape, unit, tasks):
    order = coarse_to_fine(shape)
    n = int(np.prod(shape))
    assert sorted(order.tolist()) == list(range(n))
    pending = order[np.random.default_rng(0).random(n) < 0.7]  # a partly computed surface
    units = split_units(pending, unit)
    flat = np.concatenate(units) if units else np.zeros(0, int)
    assert sorted(flat.tolist()) == sorted(pending.tolist())
    assert all(1 <= len(u) <= unit for u in units)
    shares = assign_tasks(pending, tasks, unit)
    assert len(shares) == tasks
    allpoints = np.concatenate(shares)
    assert len(allpoints) == len(pending) and set(allpoints.tolist()) == set(pending.tolist())


def test_coarse_to_fine_starts_with_a_whole_coarse_grid():
    order = coarse_to_fine((17, 17))
    first = {(int(p) // 17, int(p) % 17) for p in order[:9]}
    assert first == {(j, i) for j in (0, 8, 16) for i in (0, 8, 16)}
