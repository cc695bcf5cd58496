"""Priors of the inferred quantities and the z map of SPEC section 3.

Each prior maps a quantity to ``u`` in [0, 1] (its CDF) and back; ``z = Phi^-1(u)``.
Uniform and log-uniform priors are uniform in a space w = x or w = log x: w = a + u b.
Their transforms are written once, for all columns at once (one sequence of array
operations whatever the number of parameters: fits call them every evaluation), in torch
for training (differentiable in z) and numpy callers (through :mod:`mechinfer.arrays`);
the map from z also runs on numpy arrays, as BFGS on the native solver calls it. A
:class:`Truncated` prior (a PEtab objective prior) replaces its column by its own
quantile map; models without one never take that path.
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


@dataclass(frozen=True)
class Truncated:
    """A normal or Laplace distribution of w = x (``log`` False) or w = ln x (``log``
    True), centred at ``loc`` with scale ``scale`` (the sd, or the Laplace scale b) in w,
    truncated to low <= x <= high: PEtab's objective priors (objectivePriorType normal,
    laplace, logNormal, logLaplace, parameterScaleNormal / Laplace), truncated at the
    parameter's bounds as the petab library truncates them. Its z is Phi^-1 of its CDF,
    as for the others; without truncation that is z = (w - loc) / scale for a normal."""

    kind: str  # "normal" or "laplace"
    loc: float
    scale: float
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("normal", "laplace"):
            raise ValueError(f"truncated prior kind must be 'normal' or 'laplace', got {self.kind!r}")
        if not (math.isfinite(self.loc) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(
                f"{self.kind} prior: location must be finite and scale > 0, got {self.loc:g}, {self.scale:g}"
            )
        if not self.low < self.high or (self.log and not self.high > 0):
            raise ValueError(f"{self.kind} prior: bounds [{self.low:g}, {self.high:g}] are empty")
        c = _truncation(self)
        if not c.mass > 0:
            raise ValueError(
                f"{self.describe()}: no probability between its bounds (the distribution's mass lies elsewhere)"
            )

    def describe(self) -> str:
        of = " of ln x" if self.log else ""
        return f"{self.kind}({self.loc:g}, {self.scale:g}){of} in [{self.low:g}, {self.high:g}]"


Prior = Uniform | LogUniform | Truncated


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
    ndtri: Callable
    log: Callable
    clip: Callable
    stack: Callable


_TORCH = _Ops(
    torch.where,
    torch.exp,
    torch.special.ndtr,
    torch.zeros_like,
    torch.special.ndtri,
    torch.log,
    torch.clamp,
    torch.stack,
)
_NUMPY = _Ops(np.where, np.exp, scipy.special.ndtr, np.zeros_like, scipy.special.ndtri, np.log, np.clip, np.stack)


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
        # a truncated column's place holds the identity (its values come from _truncated_from_z)
        plain = [p if is_affine((p,)) else Uniform(0.0, 1.0) for p in priors]
        lows = [math.log(p.low) if p.log else p.low for p in plain]
        highs = [math.log(p.high) if p.log else p.high for p in plain]
        spans = [h - lo for h, lo in zip(highs, lows)]
        logs = [p.log for p in plain]
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


_TRUNCATED: dict[int, tuple[tuple[Prior, ...], list]] = {}


def _truncated_columns(priors: tuple[Prior, ...]) -> list[tuple[int, Truncated, _Truncation]]:
    """(column, prior, its constants) of the truncated priors. Cached by the tuple's
    identity, as :func:`_affine`: every evaluation of a fit maps through them."""
    found = _TRUNCATED.get(id(priors))
    if found is None or found[0] is not priors:
        cols = [(j, p, _truncation(p)) for j, p in enumerate(priors) if isinstance(p, Truncated)]
        found = _TRUNCATED[id(priors)] = (priors, cols)
    return found[1]


def is_affine(priors: tuple[Prior, ...]) -> bool:
    """Whether every prior is uniform or log-uniform (w = a + u b; compiled z maps take
    only these)."""
    return not _truncated_columns(priors)


def to_u(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    a, b, is_log = _affine(priors, theta)
    # the log is taken of log-uniform columns only (a uniform quantity may be <= 0)
    w = torch.where(is_log, torch.log(torch.where(is_log, theta, torch.ones_like(theta))), theta)
    u = (w - a) / b
    if is_affine(priors):
        return u
    return _with_columns(u, {j: torch.special.ndtr(z) for j, z in _truncated_to_z(priors, theta).items()})


def from_u(priors: tuple[Prior, ...], u):
    """theta from u, for a tensor or a numpy array (returned as the same kind)."""
    theta = _affine_from_u(priors, u)
    if is_affine(priors):
        return theta
    op = _ops(u)
    z = op.ndtri(op.clip(u, U_EPS, 1.0 - U_EPS))
    return _with_columns(theta, {j: x for j, (x, _) in _truncated_from_z(priors, z).items()})


def to_z(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    # |z| <= Z_MAX on both sides: 1 - U_EPS rounds to a u whose ndtri is 1e-4 above it
    z = torch.special.ndtri(to_u(priors, theta).clamp(U_EPS, 1.0 - U_EPS)).clamp(-Z_MAX, Z_MAX)
    if is_affine(priors):
        return z
    return _with_columns(z, _truncated_to_z(priors, theta))  # from the tails' own side, not through u


def from_z(priors: tuple[Prior, ...], z):
    """theta from z, for a tensor or a numpy array (returned as the same kind)."""
    theta = _affine_from_u(priors, _ops(z).ndtr(z))
    if is_affine(priors):
        return theta
    return _with_columns(theta, {j: x for j, (x, _) in _truncated_from_z(priors, z).items()})


def from_z_and_derivative(priors: tuple[Prior, ...], z):
    """theta = from_z(z) and d theta / d z, per parameter (the map acts on each alone):
    d theta / d u is b (uniform) or theta b (log-uniform), d u / d z the normal density;
    a truncated prior's from its quantile function (:func:`_truncated_from_z`).
    For a tensor or a numpy array (returned as the same kind)."""
    op = _ops(z)
    _, b, is_log = _affine(priors, z)
    theta = _affine_from_u(priors, op.ndtr(z))
    density = op.exp(-0.5 * z * z) * (1.0 / math.sqrt(2 * math.pi))
    dtheta = op.where(is_log, theta * b, b) * density
    if is_affine(priors):
        return theta, dtheta
    truncated = _truncated_from_z(priors, z)  # once, for both
    return (
        _with_columns(theta, {j: x for j, (x, _) in truncated.items()}),
        _with_columns(dtheta, {j: d for j, (_, d) in truncated.items()}),
    )


def _affine_from_u(priors: tuple[Prior, ...], u):
    """theta of the uniform and log-uniform columns from u (a truncated column holds a
    placeholder), for a tensor or a numpy array."""
    op = _ops(u)
    a, b, is_log = _affine(priors, u)
    w = a + u * b
    # exp of log-uniform columns only (no overflow, and no NaN gradient, from the others)
    return op.where(is_log, op.exp(op.where(is_log, w, op.zeros_like(w))), w)


def _with_columns(x, columns: dict):
    """x (..., P) with the given columns replaced (a new array or tensor; differentiable)."""
    if not columns:
        return x
    op = _ops(x)
    return op.stack([columns[j] if j in columns else x[..., j] for j in range(x.shape[-1])], -1)


# ----------------------------------------------------------- truncated priors
class _Truncation(NamedTuple):
    """A truncated prior's constants in the standardised s = (w - loc) / scale: the
    probability below the lower bound (``below``), above the upper one (``above``), and
    between them (``mass``), each computed on the side where it does not cancel."""

    below: float
    above: float
    mass: float


def _cdf(kind: str, s: float) -> float:
    if s == -math.inf:
        return 0.0
    if s == math.inf:
        return 1.0
    if kind == "normal":
        return 0.5 * math.erfc(-s / math.sqrt(2.0))
    return 0.5 * math.exp(s) if s < 0 else 1.0 - 0.5 * math.exp(-s)


def _truncation(p: Truncated) -> _Truncation:
    def w(x: float) -> float:
        if not p.log:
            return x
        return math.log(x) if x > 0 else -math.inf

    alpha, beta = (w(p.low) - p.loc) / p.scale, (w(p.high) - p.loc) / p.scale
    below, above = _cdf(p.kind, alpha), _cdf(p.kind, -beta)
    if alpha > 0:  # both bounds above the centre: the difference of upper tails
        mass = _cdf(p.kind, -alpha) - above
    elif beta < 0:  # both below: the difference of lower tails
        mass = _cdf(p.kind, beta) - below
    else:
        mass = 1.0 - below - above
    return _Truncation(below, above, mass)


Z_MAX = float(-scipy.special.ndtri(U_EPS))  # |z| of a quantity on a bound (about 7.94), as to_z clamps


def _truncated_from_z(priors: tuple[Prior, ...], z) -> dict:
    """{column: (theta, d theta / d z)} of the truncated priors' columns of z. The
    truncated distribution's quantile at Phi(z), computed from the lower tail for z <= 0
    and from the upper one above (each side keeps its digits): s = Q(below + Phi(z) mass)
    or s = -Q(above + Phi(-z) mass) for a symmetric Q; ds/dz = phi(z) mass / f(s)."""
    op = _ops(z)
    out = {}
    for j, p, c in _truncated_columns(priors):
        zj = op.clip(z[..., j], -Z_MAX, Z_MAX)
        lo = op.clip(zj, -Z_MAX, 0.0)  # each branch evaluated where it is finite
        hi = op.clip(zj, 0.0, Z_MAX)
        if p.kind == "normal":
            s = op.where(zj <= 0, op.ndtri(c.below + op.ndtr(lo) * c.mass), -op.ndtri(c.above + op.ndtr(-hi) * c.mass))
            density_s = op.exp(-0.5 * s * s) * (1.0 / math.sqrt(2 * math.pi))
        else:  # Laplace
            s = op.where(
                zj <= 0,
                _laplace_quantile(op, c.below + op.ndtr(lo) * c.mass),
                -_laplace_quantile(op, c.above + op.ndtr(-hi) * c.mass),
            )
            density_s = 0.5 * op.exp(-op.where(s < 0, -s, s))
        w = p.loc + p.scale * s
        x = op.exp(w) if p.log else w
        dw = p.scale * op.exp(-0.5 * zj * zj) * (1.0 / math.sqrt(2 * math.pi)) * c.mass / density_s
        inside = (z[..., j] > -Z_MAX) & (z[..., j] < Z_MAX)  # clamped beyond: theta stays on the bound
        out[j] = (x, op.where(inside, x * dw if p.log else dw, op.zeros_like(dw)))
    return out


def _laplace_quantile(op: _Ops, q):
    """The standard Laplace quantile: log(2 q) up to 1/2, -log(2 (1 - q)) above (each
    branch evaluated where it is finite)."""
    low = op.log(2.0 * op.clip(q, 1e-300, 0.5))
    high = -op.log(2.0 * op.clip(1.0 - q, 1e-300, 0.5))
    return op.where(q <= 0.5, low, high)


def _truncated_to_z(priors: tuple[Prior, ...], theta) -> dict:
    """{column: z} of the truncated priors' columns of theta: Phi^-1 of the CDF from the
    side of the smaller tail, clamped to |z| <= Z_MAX as the others."""
    op = _ops(theta)
    out = {}
    for j, p, c in _truncated_columns(priors):
        x = theta[..., j]
        w = op.log(op.where(x > 0, x, op.zeros_like(x) + 1e-300)) if p.log else x
        s = (w - p.loc) / p.scale
        if p.kind == "normal":
            cdf_lo, cdf_hi = op.ndtr(s), op.ndtr(-s)
        else:
            neg = op.where(s < 0, s, op.zeros_like(s))
            pos = op.where(s > 0, s, op.zeros_like(s))
            cdf_lo = op.where(s < 0, 0.5 * op.exp(neg), 1.0 - 0.5 * op.exp(-pos))
            cdf_hi = op.where(s > 0, 0.5 * op.exp(-pos), 1.0 - 0.5 * op.exp(neg))
        u_lo = op.clip((cdf_lo - c.below) / c.mass, U_EPS, 1.0 - U_EPS)
        u_hi = op.clip((cdf_hi - c.above) / c.mass, U_EPS, 1.0 - U_EPS)
        out[j] = op.where(u_lo <= u_hi, op.ndtri(u_lo), -op.ndtri(u_hi))
    return out
