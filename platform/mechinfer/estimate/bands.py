"""Trajectory bands of an estimate: the central ``level`` range, at each time of a grid,
of the observed channels simulated at draws of z from the Laplace approximation
N(centre, cov_z) (:mod:`.uncertainty`). What the parameters' uncertainty means for the
curves; the measurement noise is not added. The evaluate stage's figures
(``results/bands_*.png``) and the Serve app's trajectories route both draw them here.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..models.base import Model
from .uncertainty import check_level

BAND_DRAWS = 200


def band(
    m: Model,
    center: np.ndarray,
    cov_z: np.ndarray,
    grid: np.ndarray,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
    draws: int = BAND_DRAWS,
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (G, C): one estimate's band on ``grid`` (G,) from its ``center``
    (P,) and ``cov_z`` (P, P); ``rng`` draws the z (default: seed 0, so the same estimate
    always gets the same band). Draws whose solve fails are left out; NaN where all do."""
    level = check_level(level)
    rng = np.random.default_rng(0) if rng is None else rng
    z = gaussian_draws(center, cov_z, draws, rng)
    sims = m.simulate(m.from_z(z), grid)
    with warnings.catch_warnings():  # an all-NaN column (every draw failed there) is NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(sims, [50.0 * (1.0 - level), 50.0 * (1.0 + level)], axis=0)
    return low, high


def gaussian_draws(center: np.ndarray, cov_z: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws (n, P) of N(center, cov_z), through the covariance's eigendecomposition
    with negative eigenvalues taken as 0: a Laplace covariance of a nearly undetermined
    direction can be indefinite in rounding (Fujita's was), where a Cholesky factor
    does not exist."""
    w, v = np.linalg.eigh(0.5 * (cov_z + cov_z.T))
    factor = v * np.sqrt(np.clip(w, 0.0, None))
    return center + rng.standard_normal((n, len(center))) @ factor.T
