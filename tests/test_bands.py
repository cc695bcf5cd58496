"""Trajectory bands of an estimate (mechinfer.estimate.bands): what the page's plots and
the report's band figures draw."""

import numpy as np
import pytest

import mechinfer
from mechinfer.estimate import bands


def test_band_brackets_the_trajectory_widens_with_the_level_and_collapses_without_uncertainty():
    m = mechinfer.get_model("mmk")
    z = m.to_z(m.sample_prior(1, seed=3))[0]
    grid = np.linspace(0.0, m.T, 41)
    fit = m.simulate(m.from_z(z[None]), grid)[0]
    cov = 0.05 * np.eye(m.n_parameters)
    low, high = bands.band(m, z, cov, grid, 0.9)
    assert low.shape == high.shape == fit.shape and np.all(low <= high)
    assert np.mean((low <= fit) & (fit <= high)) > 0.95
    again = bands.band(m, z, cov, grid, 0.9)  # seeded: the same estimate gets the same band
    np.testing.assert_array_equal(low, again[0])
    wide_low, wide_high = bands.band(m, z, cov, grid, 0.99)
    assert np.all(wide_high - wide_low >= high - low - 1e-12) and np.sum(wide_high - wide_low) > np.sum(high - low)
    tight = bands.band(m, z, 1e-14 * np.eye(m.n_parameters), grid, 0.95)
    np.testing.assert_allclose(tight, [fit, fit], atol=1e-5)
    with pytest.raises(ValueError, match="level"):
        bands.band(m, z, cov, grid, 0.2)


def test_draws_of_a_covariance_indefinite_in_rounding():
    """A Laplace covariance with a direction of (rounded) negative variance still gets
    draws, with the covariance's spread along the others (np.linalg.cholesky refuses it)."""
    cov = np.array([[1.0, 1.0 + 1e-9], [1.0 + 1e-9, 1.0]])  # eigenvalues 2 and -1e-9
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(cov)
    z = bands.gaussian_draws(np.array([1.0, -1.0]), cov, 20000, np.random.default_rng(0))
    assert np.isfinite(z).all()
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.05)
    np.testing.assert_allclose(z.mean(axis=0), [1.0, -1.0], atol=0.05)
