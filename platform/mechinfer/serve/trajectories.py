"""The trajectories route of the HTTP API, without the web framework: one answered
observation set's fitted trajectory and its band (:func:`mechinfer.estimate.bands.band`)
per channel on a time grid over ``[0, T]``, for plots (the page at ``/`` draws them).

``case`` is one row of what :func:`.handlers.infer` (or :func:`.handlers.refine`)
returns, as the infer route answers it: the trajectory is the model at the answer's
estimate ``z``; the band comes from the same approximation (``center``, ``cov_z``) as the
answer's intervals."""

from __future__ import annotations

import math

import numpy as np

from ..estimate import bands
from ..estimate.estimator import Estimator

GRID_POINTS = 121  # default points of the time grid
MAX_GRID_POINTS = 1001


def _numbers(x: np.ndarray) -> list[float | None]:
    """JSON numbers, null where not finite (a failed solve)."""
    return [float(v) if math.isfinite(v) else None for v in x.tolist()]


def trajectories(est: Estimator, case: dict, level: float, points: int = GRID_POINTS) -> dict:
    """``{"t": grid, "level", "band_draws", "channels": [{"name", "unit", "sigma",
    "trajectory", "low", "high"}, ...]}`` for one answered case."""
    m = est.model
    grid = np.linspace(0.0, m.T, int(points))
    fit = m.simulate(m.from_z(np.asarray(case["z"], dtype=np.float64)[None]), grid)[0]
    low, high = bands.band(m, np.asarray(case["center"]), np.asarray(case["cov_z"]), grid, level)
    units = dict(zip(m.states, m.state_units))  # a channel that is no state (an observable) has none
    return {
        "t": _numbers(grid),
        "level": level,
        "band_draws": bands.BAND_DRAWS,
        "channels": [
            {
                "name": name,
                "unit": units.get(name, ""),
                "sigma": float(m.sigma[c]),
                "trajectory": _numbers(fit[:, c]),
                "low": _numbers(low[:, c]),
                "high": _numbers(high[:, c]),
            }
            for c, name in enumerate(m.channels)
        ],
    }
