"""Priors of the inferred quantities and the z map of SPEC section 3.

Each prior maps a quantity to ``u`` in [0, 1] (its CDF) and back; ``z = Phi^-1(u)``.
Both kinds of prior are uniform in a space w = x (uniform) or w = log x (log-uniform):
w = a + u b. The transforms are written once, in torch, for all columns at once (one
sequence of tensor operations whatever the number of parameters: fits call them every
evaluation), and serve numpy callers (through :mod:`mechinfer.arrays`), training and
BFGS (differentiable in z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# u is kept this far from 0 and 1 so that a quantity exactly on a prior bound maps to a
# finite z (about +-7.9) instead of an infinity that would poison a network or optimiser.
U_EPS = 1e-15


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    log = False

    def describe(self) -> str:
        return f"uniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float
    log = True

    def describe(self) -> str:
        return f"log-uniform({self.low:g}, {self.high:g})"


Prior = Uniform | LogUniform


def around_nominal(nominal: float, factor: float = 2.0) -> LogUniform:
    """log-uniform(nominal / factor, nominal * factor), the E. coli kinetic prior."""
    return LogUniform(nominal / factor, nominal * factor)


_AFFINE: dict[tuple, tuple[tuple[Prior, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}


def _affine(priors: tuple[Prior, ...], like: torch.Tensor):
    """(a, b, is_log) per column, as tensors like ``like``: w = a + u b, x = exp(w) where
    is_log else w. Cached by the tuple's identity (a model's priors are one tuple for
    its life; hashing P dataclasses cost more than the map at the batch of one fit)."""
    key = (id(priors), like.dtype, like.device)
    found = _AFFINE.get(key)
    if found is None or found[0] is not priors:
        lows = [math.log(p.low) if p.log else p.low for p in priors]
        highs = [math.log(p.high) if p.log else p.high for p in priors]
        found = _AFFINE[key] = (
            priors,
            (
                torch.tensor(lows, dtype=like.dtype, device=like.device),
                torch.tensor([h - lo for h, lo in zip(highs, lows)], dtype=like.dtype, device=like.device),
                torch.tensor([p.log for p in priors], device=like.device),
            ),
        )
    return found[1]


def to_u(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    a, b, is_log = _affine(priors, theta)
    # the log is taken of log-uniform columns only (a uniform quantity may be <= 0)
    w = torch.where(is_log, torch.log(torch.where(is_log, theta, torch.ones_like(theta))), theta)
    return (w - a) / b


def from_u(priors: tuple[Prior, ...], u: torch.Tensor) -> torch.Tensor:
    a, b, is_log = _affine(priors, u)
    w = a + u * b
    # exp of log-uniform columns only (no overflow, and no NaN gradient, from the others)
    return torch.where(is_log, torch.exp(torch.where(is_log, w, torch.zeros_like(w))), w)


def to_z(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtri(to_u(priors, theta).clamp(U_EPS, 1.0 - U_EPS))


def from_z(priors: tuple[Prior, ...], z: torch.Tensor) -> torch.Tensor:
    return from_u(priors, torch.special.ndtr(z))


def from_z_and_derivative(priors: tuple[Prior, ...], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """theta = from_z(z) and d theta / d z, per parameter (the map acts on each alone):
    d theta / d u is b (uniform) or theta b (log-uniform), d u / d z the normal density."""
    _, b, is_log = _affine(priors, z)
    theta = from_z(priors, z)
    density = torch.exp(-0.5 * z.square()) * (1.0 / math.sqrt(2 * math.pi))
    return theta, torch.where(is_log, theta * b, b) * density
