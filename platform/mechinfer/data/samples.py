"""Simulated experiments as dataset rows (SPEC 5): prior draw and design from
``(seed, sample_id)``, the model's noise-free output, the noise; and the SPEC test set.

Free of Ray: the Ray Data job (:mod:`mechinfer.data.generate`) calls it per chunk, and the
evaluation, the baselines and the tests call it directly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import likelihood
from ..models.base import Model
from ..models.design import draw_experiments
from ..models.simulate import simulate_observed
from ..solver import SolveStatus

TEST_SEED = 20231205  # SPEC 4: the test set, never used for training or tuning
TEST_SIZE = 1024


def simulate_chunk(model: Model, seed: int, first: int, last: int, **solver_options) -> dict[str, np.ndarray]:
    """Columns of the dataset rows for sample ids first..last-1 (SPEC 5)."""
    ids = np.arange(first, last, dtype=np.int64)
    d = draw_experiments(model, seed, ids)
    if model.observation is not None:
        value, clean, status = _fixed_design_values(model, d, **solver_options)
    else:
        with torch.no_grad():
            y, solved = simulate_observed(
                model, torch.from_numpy(d["theta"]), torch.from_numpy(d["t"]), **solver_options
            )
        clean = np.take_along_axis(y.numpy(), d["channel"][..., None].astype(np.int64), axis=2)[..., 0]
        status = solved.numpy().astype(np.int8)
        clean[status != SolveStatus.OK] = np.nan  # a failed solve is flagged and carries no numbers
        value = clean + d["noise"]
    return {
        "sample_id": ids,
        "theta": d["theta"],
        "z": d["z"],
        "t": d["t"],
        "channel": d["channel"],
        "value": value,
        "clean": clean,
        "status": status,
    }


def _fixed_design_values(model: Model, d: dict, **solver_options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """value, clean (n, N) and status (n,) of a model with its own observation model and
    design (a PEtab problem's):
    noise of the theta-dependent scale added in the noise space. A draw whose solve fails,
    or whose observables come out non-finite (wide priors blow some solves up), is flagged
    and carries no numbers."""
    channel = d["channel"].astype(np.int64)
    with torch.no_grad():
        mu, sigma, status = likelihood.predict_with_noise(
            model, torch.from_numpy(d["theta"]), torch.from_numpy(d["t"]), torch.from_numpy(channel), **solver_options
        )
    obs = model.observation
    assert obs is not None
    mu_np, sigma_np = mu.numpy(), sigma.numpy()
    clean = obs.from_noise_space(mu_np, channel)
    value = obs.from_noise_space(mu_np + sigma_np * d["noise"], channel)
    status = status.numpy().astype(np.int8)
    # float32 in the dataset: what overflows it is as unusable as a failed solve
    big = np.finfo(np.float32).max
    blown = ~(np.isfinite(value) & np.isfinite(clean) & (np.abs(value) < big) & (np.abs(clean) < big)).all(1)
    status = np.where((status == SolveStatus.OK) & blown, np.int8(SolveStatus.NONFINITE), status)
    failed = status != SolveStatus.OK
    clean[failed] = np.nan
    value[failed] = np.nan
    return value, clean, status


def spec_test_set(model: Model, n: int = TEST_SIZE) -> dict[str, np.ndarray]:
    """The SPEC test set (its first ``n`` samples): prior draws with their designs, seed
    20231205. Never used for training or tuning."""
    return simulate_chunk(model, TEST_SEED, 0, min(n, TEST_SIZE))
