"""The digits data set is read from the file scikit-learn ships, without importing scikit-learn
(its import cost every process of a job 1.5 s): the same arrays as scikit-learn's own loader."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from losslandscape.inputs import data as datasets


def test_the_digits_equal_scikit_learns_load_digits():
    from sklearn.datasets import load_digits

    images, target = datasets.digits_arrays()
    bunch = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == bunch.images.dtype
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)


def test_loading_the_digits_imports_no_scikit_learn():
    code = ("import sys\nfrom losslandscape import spec\nfrom losslandscape.inputs import data\n"
            "source = data.load_split(spec.Data(name='digits'), 'train')\n"
            "print(len(source.targets), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "False", out.stdout
