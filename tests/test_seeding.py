"""Per-sample generators built in bulk are numpy's ``default_rng([seed, sample_id])``: the
datasets' rows (SPEC 5) must not change with the way their generators are made."""

import numpy as np
import pytest

from mechinfer.models.seeding import sample_generators

CASES = [
    (0, np.arange(300)),
    (20231205, np.array([0, 1, 2**32 - 1, 2**32, 2**40 + 5, 2**63 - 1])),  # ids of one and two words
    (2**32 + 7, np.array([4, 2**33])),  # a seed of two words
    (2**160 + 11, np.array([3, 9, 2**35])),  # entropy longer than SeedSequence's pool
    (123456789, np.random.default_rng(7).integers(0, 2**62, 200)),
]


@pytest.mark.parametrize("seed,ids", CASES)
def test_same_draws_as_default_rng(seed, ids):
    for rng, sid in zip(sample_generators(seed, ids), ids, strict=True):
        ref = np.random.default_rng([seed, int(sid)])
        np.testing.assert_array_equal(rng.random(9), ref.random(9))
        np.testing.assert_array_equal(rng.standard_normal(7), ref.standard_normal(7))
        np.testing.assert_array_equal(rng.integers(0, 1000, 3), ref.integers(0, 1000, 3))


def test_negative_values_are_refused_like_numpy():
    with pytest.raises(ValueError):
        np.random.default_rng([-1, 0])
    with pytest.raises(ValueError, match="non-negative"):
        sample_generators(-1, np.arange(2))
    with pytest.raises(ValueError, match="non-negative"):
        sample_generators(0, np.array([3, -2]))
