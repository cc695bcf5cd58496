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
    """Raise ValueError for a model the stages cannot simulate yet: a PEtab problem's
    model (observables that are formulas, conditions that set inputs) is simulated per
    condition by its problem; the stages' random designs over states do not apply to it."""
    if model.inputs or model.observables:
        raise ValueError(
            f"{model.name}: a PEtab problem is simulated per condition at its own design "
            "(mechinfer.load_petab(...).solve_conditions, .log_likelihood); the stages do not train on one yet"
        )


def term(model: Model) -> _solver.ODETerm:
    """The model's equations for the solver: f, its Jacobian by dual numbers, and the
    native (compiled) form."""
    return _solver.ODETerm(model.rhs, model.rhs_and_jacobian, native=model.native_system)


def simulate_states(model: Model, theta: torch.Tensor, t: torch.Tensor, *, solver: str | None = None, **options):
    """All states at times t (any order): theta (B, P), t (B, N) -> (B, N, S), status (B,).
    Differentiable in theta."""
    check_stages_apply(model)
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
    check_stages_apply(model)
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
    """Observed channels at times t: (B, N, C) and status (B,)."""
    states, status = simulate_states(model, theta, t, **kwargs)
    return states[..., list(model.channel_states)], status
