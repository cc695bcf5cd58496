"""Likelihood and metrics (SPEC 4): Gaussian noise of known sigma per channel, so the NLL
of parameters for one observation set is half the sum of squared sigma-scaled residuals;
R2 (the paper's Table 1 metric) is one minus their sum over a test set relative to the
channels' spread, with a bootstrap standard error over samples.

Observation sets may be padded to a common length with NaN times and values (sets of
different sizes in one batch); padded entries carry no weight anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import solver as _solver
from ..solver import SolveStatus
from .simulate import simulate_observed, states_and_jacobian, term

if TYPE_CHECKING:
    from .base import Model


def observed_mask(t: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t) & torch.isfinite(value)


def to_noise_space(model: Model, value, channel):
    """Observed values mapped where their noise is additive (mechinfer.models.observation):
    the identity for a model whose channels are states with Gaussian noise; ``log10(x)``
    for a PEtab log10 observable. Observation sets enter the library here (datasets,
    users' tables, served requests); every function below takes values in that space."""
    if model.observation is None:
        return value
    if isinstance(channel, torch.Tensor):
        channel = channel.detach().cpu().numpy()
    return model.observation.to_noise_space(value, np.asarray(channel, dtype=np.int64))


def predict(model: Model, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor, **solver_options):
    """Noise-free model output mu (B, N) at each observation's (t, channel), in the noise
    space (see :func:`to_noise_space`), and the solver status (B,). Padded entries (NaN t)
    are simulated at t = 0 and must be masked."""
    mu, _, status = predict_with_noise(model, theta, t, channel, **solver_options)
    return mu, status


def predict_with_noise(model: Model, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor, **solver_options):
    """mu (B, N) as :func:`predict` gives it, the noise scale sigma (B, N) of each
    observation (a function of theta where the model estimates it), and status (B,)."""
    if model.observation is not None:  # it takes padding (NaN t) as it is
        return model.observation.predict(model, theta, t, channel.long(), **solver_options)
    t_filled = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    y, status = simulate_observed(model, theta, t_filled, **solver_options)
    mu = y.gather(2, channel.long().unsqueeze(-1)).squeeze(-1)
    return mu, noise_scale(model, theta, t, channel).to(mu.dtype), status


def noise_scale(model: Model, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """sigma (B, N) of each observation, in the noise space: the channel's fixed sigma, or
    the model's noise formula at theta (no solve)."""
    if model.observation is not None:
        t_filled = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
        return model.observation.noise(theta, t_filled, channel.long())
    return torch.as_tensor(model.sigma, device=t.device)[channel.long()]


def predict_jacobian(model: Model, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor, **solver_options):
    """mu (B, N) as :func:`predict` gives it, its Jacobian in theta (B, N, P) and the
    status (B,), from the native solver's sensitivities; ``None`` where that solver does
    not apply (then differentiate :func:`predict`), which includes models with an
    observation model of their own."""
    if model.observation is not None:
        return None
    t_filled = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    solved = states_and_jacobian(model, theta, t_filled, **solver_options)
    if solved is None:
        return None
    states, jac, status = solved
    pick = torch.as_tensor(model.channel_states, device=channel.device)[channel.long()]  # (B, N) state index
    mu = states.gather(2, pick[..., None])[..., 0]
    dmu = jac.gather(2, pick[..., None, None].expand(*pick.shape, 1, jac.shape[-1]))[:, :, 0]
    return mu, dmu, status


@dataclass
class SortedObservations:
    """Observation sets prepared once for repeated NLL + gradient evaluations (a fit):
    per row, times sorted (padding first, at t = 0), the observed state's index, the
    value and its weight 1 / sigma^2 (0 for padding). The NLL does not depend on the
    order of a set's observations."""

    t: np.ndarray
    state: np.ndarray
    value: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, model: Model, t, channel, value) -> SortedObservations:
        """From (B, N) times, channels and values (tensors on the CPU or arrays; the
        channel of a padded entry, NaN t, is not read), in numpy throughout: at the batch
        of one refinement each torch call on these tiny arrays costs ~10 us."""
        t, value = np.asarray(t, dtype=np.float64), np.asarray(value, dtype=np.float64)
        timed = np.isfinite(t)
        mask = timed & np.isfinite(value)
        channel = np.where(timed, channel, 0).astype(np.int64)
        t_np = np.where(mask, t, 0.0)
        order = np.argsort(t_np, axis=1, kind="stable")
        rows = np.arange(len(order))[:, None]
        pick = lambda a: a[rows, order]  # np.take_along_axis's result, without its per-call setup
        states = np.asarray(model.channel_states)[channel]
        weight = np.where(mask, 1.0 / model.sigma[channel] ** 2, 0.0)
        return cls(pick(t_np), pick(states), pick(np.where(mask, value, 0.0)), pick(weight))


def nll_and_gradient(model: Model, obs: SortedObservations, **solver_options):
    """``fn(theta, rows) -> (NLL (b,), its gradient in theta (b, P), status (b,))`` for
    the sets ``rows`` of ``obs``, numpy arrays in and out, by the native solver's
    discrete adjoint; ``None`` where that solver does not apply (also for models with an
    observation model of their own). theta must come from the z map (inside the prior,
    by construction), so it is not checked here."""
    if model.observation is not None:
        return None
    solve = _solver.nll_and_gradient(term(model), **solver_options)
    if solve is None:
        return None

    def fn(theta: np.ndarray, rows: np.ndarray):
        return solve(theta, obs.t[rows], obs.state[rows], obs.value[rows], obs.weight[rows])

    return fn


def nll_from_mu(
    model: Model,
    mu: torch.Tensor,
    channel: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor | None = None,
    *,
    tame: float | None = None,
) -> torch.Tensor:
    """1/2 sum_i ((x_i - mu_i) / sigma_{c_i})^2 over the observed entries: (B,). For a model
    with an observation model of its own (values and mu in its noise space, ``sigma`` per
    observation from :func:`predict_with_noise`): sum_i log sigma_i + r_i^2 / 2 (normal)
    or + |r_i| (Laplace), r_i = (x_i - mu_i) / sigma_i, constants dropped.

    ``tame`` (R, for training): each term of a residual beyond R grows like the log of
    |r| instead, continuous with its first derivative at R (normal: R^2 / 2 + R^2
    log(|r| / R); Laplace: R + R log(|r| / R)); unchanged within R. A network's early
    estimates for a PEtab problem's model can put a lin-scale observable 1e30 away
    from its value (priors of 16 decades): the exact term overflows float32 and its
    gradient swamps every other sample's, while the tamed one's gradient in log |mu|
    stays about R^2 and still points the right way."""
    if sigma is None:
        sigma = torch.as_tensor(model.sigma, dtype=mu.dtype, device=mu.device)[channel.long()]
    sigma = torch.where(mask, sigma.to(mu.dtype), torch.ones_like(mu))
    r = torch.where(mask, (value.to(mu.dtype) - mu) / sigma, torch.zeros_like(mu))
    if model.observation is None and tame is None:
        return 0.5 * r.square().sum(dim=-1)
    laplace = (
        torch.as_tensor(model.observation.laplace, device=mu.device)[channel.long()]
        if model.observation is not None
        else torch.zeros_like(mask)
    )
    size = r.abs()
    per = torch.where(laplace, size, 0.5 * r.square())
    if tame is not None:
        far = size > tame
        grown = torch.log(torch.where(far, size, tame) / tame)
        per = torch.where(far, torch.where(laplace, tame * (1.0 + grown), tame * tame * (0.5 + grown)), per)
    if model.observation is None:
        return per.sum(dim=-1)
    return (per + torch.where(mask, torch.log(sigma), torch.zeros_like(mu))).sum(dim=-1)


def nll(
    model: Model,
    theta: torch.Tensor,
    t: torch.Tensor,
    channel: torch.Tensor,
    value: torch.Tensor,
    **solver_options,
) -> torch.Tensor:
    """Negative log-likelihood (constant dropped) of theta (B, P) for each set: (B,).
    Differentiable in theta through the solver; NaN where the solver failed."""
    mu, sigma, status = predict_with_noise(model, theta, t, channel, **solver_options)
    out = nll_from_mu(model, mu, channel, value, observed_mask(t, value), sigma)
    return torch.where(status == SolveStatus.OK, out, torch.full_like(out, torch.nan))


@dataclass
class R2:
    value: float
    stderr: float

    def __str__(self) -> str:
        return f"{self.value:.4f} ± {self.stderr:.4f}"


def r2(
    model: Model,
    mu: np.ndarray,
    channel: np.ndarray,
    x: np.ndarray,
    *,
    sigma: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> R2:
    """R^2 of SPEC 4 for predictions mu against observations x (both (B, N), NaN-padded),
    with a bootstrap standard error over samples. Pass the noise-free values as x for
    R2_true.

    Residuals and the channels' spread are in units of ``model.sigma`` of each channel,
    or, with ``sigma`` (B, N), of each observation's own noise scale (a model whose noise
    scale varies with the parameters: pass each test sample's true scale, from
    :func:`noise_scale` at its true theta): R2 = 1 - sum_i w_i (x_i - mu_i)^2 /
    sum_i w_i (x_i - xbar_c)^2 with w_i = 1 / sigma_i^2 and xbar_c = sum w x / sum w over
    channel c's observations in the test set, the weighted least-squares R^2. With one
    sigma per channel this is the formula above (the weighted mean is the mean). The mean
    is weighted because the unweighted one of a test set whose noise scales span decades
    sits where the noisiest samples' noise puts it, far from the precise samples' values
    in their units: the spread then dwarfs any residual (on Boehm's priors the prior
    median's predictions scored 0.9999, as the true parameters did). The weights make
    the most precisely observed samples count most: the score is about them.

    The bootstrap resamples samples exactly, from per-sample per-channel sums."""
    mask = np.isfinite(x) & np.isfinite(channel.astype(float))
    idx = np.where(mask, channel, 0).astype(int)
    n_ch = len(model.channels)
    onehot = (channel[..., None] == np.arange(n_ch)) & mask[..., None]  # (B, N, C)
    if sigma is None:
        resid = np.where(mask, ((x - mu) / model.sigma[idx]) ** 2, 0.0).sum(axis=1)  # (B,)
        xs = np.where(mask, x, 0.0)[..., None]
        count, total, squares = onehot.sum(1), (onehot * xs).sum(1), (onehot * xs**2).sum(1)  # (B, C)

        def score(weights):  # weights (K, B): how often each sample is drawn
            n_c, s_c, q_c = weights @ count, weights @ total, weights @ squares
            mean = s_c / np.maximum(n_c, 1)
            denom = ((q_c - 2 * mean * s_c + n_c * mean**2) / model.sigma**2).sum(-1)
            return 1.0 - (weights @ resid) / denom

    else:
        sig = np.where(mask, np.asarray(sigma, dtype=np.float64), 1.0)
        w = np.where(mask, 1.0 / sig**2, 0.0)  # (B, N)
        resid = (w * np.where(mask, x - mu, 0.0) ** 2).sum(axis=1)
        w_c = (onehot * w[..., None]).sum(1)  # (B, C)
        # centred on the full set's weighted means: the same score, less cancellation
        centre = (onehot * (w * np.where(mask, x, 0.0))[..., None]).sum((0, 1)) / np.maximum(w_c.sum(0), 1e-300)
        xc = np.where(mask, x - centre[idx], 0.0)
        wx_c, wxx_c = (onehot * (w * xc)[..., None]).sum(1), (onehot * (w * xc**2)[..., None]).sum(1)

        def score(weights):
            sw, swx = weights @ w_c, weights @ wx_c
            spread = (weights @ wxx_c - np.where(sw > 0, swx**2 / np.where(sw > 0, sw, 1.0), 0.0)).sum(-1)
            return 1.0 - (weights @ resid) / spread

    full = float(score(np.ones((1, len(resid))))[0])
    rng = np.random.default_rng(seed)
    boot = []
    for start in range(0, n_boot, 250):
        k = min(250, n_boot - start)
        draws = rng.integers(0, len(resid), size=(k, len(resid)))
        weights = np.zeros((k, len(resid)))
        np.add.at(weights, (np.arange(k)[:, None], draws), 1.0)
        boot.append(score(weights))
    return R2(full, float(np.std(np.concatenate(boot), ddof=1)))
