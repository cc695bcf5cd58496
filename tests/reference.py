"""Tight-tolerance references for the solver tests: scipy Radau on the model's own rate
laws (evaluated on plain floats), and the Lambert W closed form for mmk."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.special import lambertw


def radau_states(model, theta: np.ndarray, t: np.ndarray, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """All states (N, S) of one sample at sorted times t (N,), by scipy Radau."""
    p = SimpleNamespace(**dict(zip(model.parameter_names, theta.tolist())))
    c = SimpleNamespace(**model.constants)

    def f(_, y):
        d = model.rates(SimpleNamespace(**dict(zip(model.states, y.tolist()))), p, c)
        return [d[name] for name in model.states]

    y0 = model.initial_state(torch.from_numpy(theta)).numpy()
    sol = solve_ivp(f, (0.0, float(t[-1])), y0, method="Radau", t_eval=t, rtol=rtol, atol=atol)
    assert sol.success, sol.message
    return sol.y.T


def radau(model, theta: np.ndarray, t: np.ndarray, **tol) -> np.ndarray:
    """Observed channels (N, C) of one sample at sorted times t (N,)."""
    return radau_states(model, theta, t, **tol)[:, list(model.channel_states)]


def mmk_closed_form(theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    vmax, km, s0, p0 = theta
    s = km * lambertw((s0 / km) * np.exp((s0 - vmax * t) / km)).real
    return np.stack([s, p0 + s0 - s], axis=-1)
