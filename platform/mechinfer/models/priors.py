"""Priors of the inferred quantities and the z map of SPEC section 3.

Each prior maps a quantity to ``u`` in [0, 1] (its CDF) and back; ``z = Phi^-1(u)``.
Both kinds of prior are uniform in a space w = x (uniform) or w = log x (log-uniform):
w = a + u b. The transforms are written once, for all columns at once (one sequence of
array operations whatever the number of parameters: fits call them every evaluation),
in torch for training (differentiable in z) and numpy callers (through
:mod:`mechinfer.arrays`); the map from z also runs on numpy arrays, as BFGS on the
native solver calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.special
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


class _Ops(NamedTuple):
    """The array functions the map is written with, for torch tensors or numpy arrays:
    one map for both. BFGS on the native solver calls it with numpy arrays every
    evaluation, where a dozen torch operations (~5 us each) cost as much as an mmk solve."""

    where: Callable
    exp: Callable
    ndtr: Callable
    zeros_like: Callable


_TORCH = _Ops(torch.where, torch.exp, torch.special.ndtr, torch.zeros_like)
_NUMPY = _Ops(np.where, np.exp, scipy.special.ndtr, np.zeros_like)


def _ops(x) -> _Ops:
    return _TORCH if isinstance(x, torch.Tensor) else _NUMPY


_AFFINE: dict[tuple, tuple[tuple[Prior, ...], tuple]] = {}


def _affine(priors: tuple[Prior, ...], like):
    """(a, b, is_log) per column, as tensors like ``like`` (or numpy arrays for a numpy
    ``like``): w = a + u b, x = exp(w) where is_log else w. Cached by the tuple's
    identity (a model's priors are one tuple for its life; hashing P dataclasses cost
    more than the map at the batch of one fit)."""
    key = (id(priors), like.dtype, like.device) if isinstance(like, torch.Tensor) else (id(priors), "numpy")
    found = _AFFINE.get(key)
    if found is None or found[0] is not priors:
        lows = [math.log(p.low) if p.log else p.low for p in priors]
        highs = [math.log(p.high) if p.log else p.high for p in priors]
        spans = [h - lo for h, lo in zip(highs, lows)]
        logs = [p.log for p in priors]
        if isinstance(like, torch.Tensor):
            arrays: tuple = (
                torch.tensor(lows, dtype=like.dtype, device=like.device),
                torch.tensor(spans, dtype=like.dtype, device=like.device),
                torch.tensor(logs, device=like.device),
            )
        else:
            arrays = (np.array(lows), np.array(spans), np.array(logs))
        found = _AFFINE[key] = (priors, arrays)
    return found[1]


def to_u(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    a, b, is_log = _affine(priors, theta)
    # the log is taken of log-uniform columns only (a uniform quantity may be <= 0)
    w = torch.where(is_log, torch.log(torch.where(is_log, theta, torch.ones_like(theta))), theta)
    return (w - a) / b


def from_u(priors: tuple[Prior, ...], u):
    """theta from u, for a tensor or a numpy array (returned as the same kind)."""
    op = _ops(u)
    a, b, is_log = _affine(priors, u)
    w = a + u * b
    # exp of log-uniform columns only (no overflow, and no NaN gradient, from the others)
    return op.where(is_log, op.exp(op.where(is_log, w, op.zeros_like(w))), w)


def to_z(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtri(to_u(priors, theta).clamp(U_EPS, 1.0 - U_EPS))


def from_z(priors: tuple[Prior, ...], z):
    """theta from z, for a tensor or a numpy array (returned as the same kind)."""
    return from_u(priors, _ops(z).ndtr(z))


def from_z_and_derivative(priors: tuple[Prior, ...], z):
    """theta = from_z(z) and d theta / d z, per parameter (the map acts on each alone):
    d theta / d u is b (uniform) or theta b (log-uniform), d u / d z the normal density.
    For a tensor or a numpy array (returned as the same kind)."""
    op = _ops(z)
    _, b, is_log = _affine(priors, z)
    theta = from_z(priors, z)
    density = op.exp(-0.5 * z * z) * (1.0 / math.sqrt(2 * math.pi))
    return theta, op.where(is_log, theta * b, b) * density
