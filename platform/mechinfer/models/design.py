"""The observation design of SPEC 2: random times, one random channel per observation,
Gaussian noise; and the prior draw, all from ``(seed, sample_id)`` alone.

Each sample has its own generator seeded by ``[seed, sample_id]``, so a sample's rows are
the same whatever batch, block or worker produced them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from . import priors as _priors
from .observation import standard_noise
from .seeding import sample_generators

if TYPE_CHECKING:
    from .base import Model


def sample_uniforms(model: Model, seed: int, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample raw randomness: prior CDF values, times, channels, standard normals."""
    n, n_par, n_obs, n_ch = len(sample_ids), model.n_parameters, model.n_obs, len(model.channels)
    u = np.empty((n, n_par + 2 * n_obs))
    normal = np.empty((n, n_obs))
    for row, rng in enumerate(sample_generators(seed, sample_ids)):  # default_rng([seed, sample_id])
        rng.random(out=u[row])
        rng.standard_normal(out=normal[row])
    channel = np.minimum((u[:, n_par + n_obs :] * n_ch).astype(np.int8), n_ch - 1)
    return {"theta": u[:, :n_par], "t": u[:, n_par : n_par + n_obs] * model.T, "channel": channel, "normal": normal}


def draw_experiments(model: Model, seed: int, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
    """theta (n, P), z (n, P), t (n, N) sorted, channel (n, N) int8, noise (n, N).

    A model with a fixed design (a PEtab problem's: mechinfer.models.observation) takes
    its design's points in every sample, and ``noise`` is then of unit scale (normal, or
    Laplace where the channel's noise is): its scale depends on theta, so the simulation
    multiplies it in, in the noise space."""
    raw = sample_uniforms(model, seed, sample_ids)
    u = torch.from_numpy(raw["theta"])
    theta = _priors.from_u(model.priors, u)
    if model.observation is not None:
        obs = model.observation
        n = len(sample_ids)
        channel = np.broadcast_to(obs.design_channel.astype(np.int8), (n, len(obs.design_channel))).copy()
        return {
            "theta": theta.numpy(),
            "z": _priors.to_z(model.priors, theta).numpy(),
            "t": np.broadcast_to(obs.design_t, channel.shape).copy(),
            "channel": channel,
            "noise": standard_noise(raw["normal"], obs.laplace[channel]),
        }
    order = np.argsort(raw["t"], axis=1, kind="stable")
    channel = np.take_along_axis(raw["channel"], order, axis=1)
    return {
        "theta": theta.numpy(),
        "z": _priors.to_z(model.priors, theta).numpy(),
        "t": np.take_along_axis(raw["t"], order, axis=1),
        "channel": channel,
        "noise": raw["normal"] * model.sigma[channel],
    }
