"""From parameters and observation times to the model's noise-free observed channels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import solver as _solver

if TYPE_CHECKING:
    from .base import Model


def check_times(model: Model, t: torch.Tensor, n_batch: int) -> torch.Tensor:
    """Validate observation times and broadcast (N,) to (B, N)."""
    if t.ndim == 1:
        t = t.expand(n_batch, -1)
    if t.ndim != 2 or t.shape[0] != n_batch:
        raise ValueError(
            f"{model.name}.simulate: t must be (N,) or (B, N) with B = {n_batch}, got shape {tuple(t.shape)}"
        )
    if t.shape[1] == 0:
        raise ValueError(f"{model.name}.simulate: t holds no observation times")
    if not torch.isfinite(t).all():
        raise ValueError(f"{model.name}.simulate: t holds NaN or infinite times")
    if (t < 0).any() or (t > model.T).any():
        bad = t[(t < 0) | (t > model.T)][0].item()
        raise ValueError(f"{model.name}.simulate: time {bad:g} h is outside the horizon [0, {model.T:g}] h")
    return t


def check_stages_apply(model: Model) -> None:
    """Raise ValueError for a model the stages cannot train on: one whose noise formula
    reads model states (the networks' training evaluates the noise from the parameters
    alone, :meth:`mechinfer.models.observation.Observation.noise`)."""
    if model.observation is not None and model.observation.noise_reads_states:
        raise ValueError(
            f"{model.name}: a noise formula reads model states; the stages need noise scales that depend "
            "on parameters, placeholders and time only"
        )


def _check_single_system(model: Model) -> None:
    if model.observation is not None or model.inputs:
        raise ValueError(
            f"{model.name}: its states depend on the condition; simulate its observations "
            "(Model.simulate, mechinfer.models.likelihood.predict) instead of its states"
        )


def term(model: Model) -> _solver.ODETerm:
    """The model's equations for the solver: f, its Jacobian by dual numbers, and the
    native (compiled) form."""
    return _solver.ODETerm(model.rhs, model.rhs_and_jacobian, native=model.native_system)


def simulate_states(model: Model, theta: torch.Tensor, t: torch.Tensor, *, solver: str | None = None, **options):
    """All states at times t (any order): theta (B, P), t (B, N) -> (B, N, S), status (B,).
    Differentiable in theta."""
    _check_single_system(model)
    model.check_theta(theta)
    t = check_times(model, t.to(theta.dtype), theta.shape[0])
    order = torch.argsort(t, dim=1)
    t_sorted = torch.gather(t, 1, order)
    states, status = _solver.solve(
        term(model), model.initial_state(theta), theta, t_sorted, method=solver or model.solver, **options
    )
    unsort = torch.argsort(order, dim=1)
    states = torch.gather(states, 1, unsort[:, :, None].expand_as(states))
    return states, status


def states_and_jacobian(model: Model, theta: torch.Tensor, t: torch.Tensor, **options):
    """All states at times t (any order), (B, N, S), their Jacobian in theta (B, N, S, P)
    from the native solver's forward sensitivities, and status (B,); ``None`` where the
    native solver does not apply (see :func:`mechinfer.solver.jacobian`)."""
    theta = theta.detach()
    _check_single_system(model)
    model.check_theta(theta)
    t = check_times(model, t.to(theta.dtype), theta.shape[0])
    order = torch.argsort(t, dim=1)
    solved = _solver.jacobian(term(model), theta, torch.gather(t, 1, order), **options)
    if solved is None:
        return None
    states, jac, status = solved
    unsort = torch.argsort(order, dim=1)
    states = torch.gather(states, 1, unsort[:, :, None].expand_as(states))
    jac = torch.gather(jac, 1, unsort[:, :, None, None].expand_as(jac))
    return states.to(theta.dtype), jac.to(theta.dtype), status


def simulate_observed(model: Model, theta: torch.Tensor, t: torch.Tensor, **kwargs):
    """Observed channels at times t: (B, N, C) and status (B,), in the model's own units
    (not its noise space)."""
    if model.observation is not None:
        model.check_theta(theta)
        t = check_times(model, t.to(theta.dtype), theta.shape[0])
        n_batch, n_points = t.shape
        n_ch = len(model.channels)
        channel = torch.arange(n_ch).repeat(n_batch, n_points)  # (B, N * C), point-major
        t_rep = t.repeat_interleave(n_ch, dim=1)
        mu, _, status = model.observation.predict(model, theta, t_rep, channel, **kwargs)
        y = model.observation.from_noise_space(mu, channel.numpy())
        return y.reshape(n_batch, n_points, n_ch), status
    states, status = simulate_states(model, theta, t, **kwargs)
    return states[..., list(model.channel_states)], status
