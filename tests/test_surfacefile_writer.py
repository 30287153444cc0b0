"""The one point writer (surfacefile/write.PointWriter) on real HDF5 files: a job's units, the
Hessian maps' units and a merge's whole-dataset copy put the same numbers where numpy says,
and the done flags only on the points written."""

from __future__ import annotations

import h5py
import numpy as np

from losslandscape.run.protocol import Finished
from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile import write as surface

SHAPE = (3, 4)  # (ny, nx)


def _file(path, values=ff.VALUES, maps=False):
    f = h5py.File(path, "w")
    surface.create_values(f, SHAPE, values)
    if maps:
        for name in ff.EIG_MAPS:
            f.create_dataset(name, shape=SHAPE, dtype="f8", fillvalue=np.nan)
        f.create_dataset(ff.EIG_DONE, shape=SHAPE, dtype="u1", fillvalue=0)
    return f


def test_a_unit_lands_where_numpy_puts_it_and_only_its_splits_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    points = [0, 5, 11]
    results = [{"train": (float(rng.random()), float(rng.random())), "test": (float(rng.random()), 0.5)},
               {"train": (float("inf"), 10.0)},  # a diverged loss stays +inf
               {"test": (0.25, 75.0)}]
    with _file(tmp_path / "s.h5") as f:
        surface.PointWriter(f).write(Finished(points, results, [1.0, 2.0, 3.0]))
        for split in ff.SPLITS:
            loss = np.full(12, np.nan)
            acc = np.full(12, np.nan)
            done = np.zeros(12, np.uint8)
            for p, res in zip(points, results):
                if split in res:
                    loss[p], acc[p], done[p] = res[split][0], res[split][1], 1
            np.testing.assert_array_equal(f[f"{split}_loss"][...], loss.reshape(SHAPE))
            np.testing.assert_array_equal(f[f"{split}_acc"][...], acc.reshape(SHAPE))
            np.testing.assert_array_equal(f[f"{split}_done"][...], done.reshape(SHAPE))
        seconds = np.full(12, np.nan)
        seconds[points] = [1.0, 2.0, 3.0]
        np.testing.assert_array_equal(f["point_seconds"][...], seconds.reshape(SHAPE))


def test_a_file_without_accuracy_gets_only_the_loss(tmp_path):
    with _file(tmp_path / "s.h5", values=("loss",)) as f:
        surface.PointWriter(f).write(Finished([3], [{"train": (0.5, float("nan"))}], [0.1]))
        assert "train_acc" not in f
        assert f["train_loss"][0, 3] == 0.5 and f["train_done"][0, 3] == 1


def test_the_maps_unit(tmp_path):
    with _file(tmp_path / "s.h5", maps=True) as f:
        surface.PointWriter(f, maps=True).write(Finished([1, 7], [{"eig": (4.0, -0.5)}, {"eig": (3.0, 0.0)}], [0, 0]))
        want_max, want_min, want_done = np.full(12, np.nan), np.full(12, np.nan), np.zeros(12, np.uint8)
        want_max[[1, 7]], want_min[[1, 7]], want_done[[1, 7]] = [4.0, 3.0], [-0.5, 0.0], 1
        np.testing.assert_array_equal(f["max_eig"][...].ravel(), want_max)
        np.testing.assert_array_equal(f["min_eig"][...].ravel(), want_min)
        np.testing.assert_array_equal(f["eig_done"][...].ravel(), want_done)
        assert not f["train_done"][...].any()  # the surface's own flags untouched


def test_whole_dataset_copy_equals_point_by_point(tmp_path):
    """A merge writes whole datasets at once, a job point by point: the same bytes."""
    rng = np.random.default_rng(1)
    points = np.array([2, 3, 8, 9, 10])
    values = {name: (points, rng.random(len(points))) for name in ff.value_names()}
    values[ff.POINT_SECONDS] = (points, rng.random(len(points)))
    done = {ff.done_name("train"): points, ff.done_name("test"): points[:2]}
    with _file(tmp_path / "a.h5") as a, _file(tmp_path / "b.h5") as b:
        surface.PointWriter(a).write_points(values, done)
        surface.PointWriter(b, whole=True).write_points(values, done)
        for name in a:
            assert a[name][...].tobytes() == b[name][...].tobytes(), name
        assert int(a["test_done"][...].sum()) == 2
