"""Batched trust-region Gauss-Newton for least squares in z space, inside a box.

Why: the NLL (SPEC 4) is half a sum of squared sigma-scaled residuals, and the native
solver gives their exact Jacobian J by forward sensitivities. J^T J is then a Hessian
that BFGS would spend ~P iterations learning: near an optimum a Gauss-Newton method
takes 5-20 iterations where BFGS from the network's start takes 40-130 evaluations
(fides and lsqnonlin fit ODE models this way). Each problem keeps its own state (z, f,
g = J^T r, H = J^T J, trust radius, trial step) and, as in :mod:`.bfgs`, every round
evaluates residuals and Jacobian of all running problems at once (:mod:`.schedule`:
queue, deadlines, time accounting, statuses).

The iteration (Nocedal & Wright, Algorithm 4.1, with the subproblem solved exactly
through an eigendecomposition of the P x P Gauss-Newton Hessian, their Algorithm 4.3):
the step minimises the quadratic model g.p + p.H p / 2 within |p| <= radius; it is
accepted when the actual decrease is at least ETA of the predicted one; the radius
shrinks to SHRINK |p| when the ratio rho = actual / predicted is below RHO_LOW (the step
is then also rejected if rho < ETA or f is not finite there), and grows by GROW, up to
the box's diameter, when rho > RHO_HIGH and the step reached the radius.

The box: every iterate stays in |z_i| <= Z_BOX. z is N(0, 1) under the prior, and
:data:`~mechinfer.models.priors.U_EPS` already maps a quantity on a prior bound to
|z| = Z_BOX (about 7.94): beyond it the map from z moves theta by less than 1e-15 of the
prior's range while the NLL's gradient there vanishes, so an unconstrained optimiser
drifts without bound along directions the data do not determine (BFGS ends 47% of the
E. coli parameters beyond |z| = 6, up to |z| ~ 2e4). The box changes no NLL that
matters and keeps estimates where the z map (and a network trained on it) is defined.
Parameters on a face of the box whose gradient points outward are held there (the
subproblem is solved over the others); a step that would leave the box is either
projected onto it or cut back to its face, whichever the model says decreases f more.

Stops per problem with tolerances like :func:`~.bfgs.bfgs`'s: CONVERGED when the
projected gradient's inf-norm is <= gtol, an accepted step decreased f by no more than
ftol relative, or the model predicts no more than that from a step the radius does not
limit; MAX_ITER at the iteration limit; LINE_SEARCH when max_trials steps in a row are
rejected (the radius has shrunk by SHRINK^max_trials); BAD_START; DEADLINE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import scipy.special
import torch

from ..models import priors
from . import schedule
from .schedule import FitResult, FitStatus, Rows

Z_BOX = float(-scipy.special.ndtri(priors.U_EPS))  # 7.94: |z| of a quantity on its prior bound
ETA = 1e-4  # accept a step when actual decrease >= ETA * predicted
RHO_LOW, RHO_HIGH = 0.25, 0.75  # shrink below, grow above (Nocedal & Wright's constants)
SHRINK, GROW = 0.25, 2.0  # the new radius: SHRINK |p| after a poor step, GROW radius after a very good one

_CONVERGED, _MAX_ITER, _LINE_SEARCH, _BAD_START = (
    int(s) for s in (FitStatus.CONVERGED, FitStatus.MAX_ITER, FitStatus.LINE_SEARCH, FitStatus.BAD_START)
)


@dataclass
class _Running(Rows):
    """The problems being minimised, one row each: their rows of x0 (``idx``), point,
    value, gradient J^T r, Gauss-Newton Hessian J^T J, trust radius, trial point and the
    decrease the model predicts there, rejected steps in a row, and whether the problem
    is yet to be evaluated (``fresh``: its trial point is its start)."""

    x: np.ndarray
    f: np.ndarray
    g: np.ndarray
    H: np.ndarray
    radius: np.ndarray
    x_try: np.ndarray
    pred: np.ndarray
    trials: np.ndarray
    fresh: np.ndarray

    @classmethod
    def start(cls, rows: np.ndarray, x0: np.ndarray, radius0: float) -> _Running:
        b, p = x0.shape
        return cls(
            idx=rows,
            x=x0.copy(),
            f=np.zeros(b),
            g=np.zeros((b, p)),
            H=np.zeros((b, p, p)),
            radius=np.full(b, radius0),
            x_try=x0.copy(),
            pred=np.zeros(b),
            trials=np.zeros(b, dtype=np.int64),
            fresh=np.ones(b, dtype=bool),
        )


@numba.njit(cache=True)
def _model_decrease(g, H, p):
    """-(g.p + p.H p / 2): the decrease the quadratic model predicts for step p."""
    n = len(g)
    acc = 0.0
    for j in range(n):
        hp = 0.0
        for k in range(n):
            hp += H[j, k] * p[k]
        acc += g[j] * p[j] + 0.5 * p[j] * hp
    return -acc


@numba.njit(cache=True)
def _held(x, g, box):
    """Parameters on a face of the box whose gradient points out of it: held there."""
    return ((x >= box) & (g < 0.0)) | ((x <= -box) & (g > 0.0))


@numba.njit(cache=True)
def _subproblem(g, H, radius):
    """argmin g.p + p.H p / 2 over |p| <= radius for a positive semidefinite H, and
    whether the radius limits it. In H's eigenbasis (H = V diag(w) V^T, a = V^T g) the
    step is p(lam) = -V a / (w + lam): lam = 0 if that is inside (the pseudo-inverse
    step, zero along directions H does not see, where g has no component either), else
    the lam > 0 with |p(lam)| = radius, by safeguarded Newton on 1/|p(lam)| - 1/radius
    from below (Nocedal & Wright Alg. 4.3; monotone from there). |p| <= radius always
    (a last rescaling makes sure)."""
    n = len(g)
    w, V = np.linalg.eigh(H)
    a = np.zeros(n)
    for j in range(n):
        for k in range(n):
            a[j] += V[k, j] * g[k]
    floor = 1e-12 * max(abs(w[0]), abs(w[n - 1]), 1e-300)  # eigenvalues below this count as zero
    s0 = 0.0
    unseen = 0.0  # |a|^2 along directions H does not see
    total = 0.0
    for j in range(n):
        total += a[j] * a[j]
        if w[j] > floor:
            s0 += (a[j] / w[j]) ** 2
        else:
            unseen += a[j] * a[j]
    c = np.zeros(n)
    limited = w[0] < -floor or unseen > 1e-24 * max(total, 1e-300) or math.sqrt(s0) > radius
    if not limited:
        for j in range(n):
            c[j] = -a[j] / w[j] if w[j] > floor else 0.0
    else:
        shift = max(0.0, -w[0])  # lam > -w_min keeps H + lam I positive definite
        hi = math.sqrt(total) / radius + shift  # |p(hi)| <= |g| / (w_min + hi) <= radius
        lo = max(shift, hi - shift - w[n - 1])  # |p(lo)| >= |g| / (w_max + lo) >= radius
        lam = max(lo, shift + 1e-12 * hi)
        for _ in range(60):
            s2 = 0.0
            s3 = 0.0
            for j in range(n):
                d = w[j] + lam
                s2 += a[j] * a[j] / (d * d)
                s3 += a[j] * a[j] / (d * d * d)
            norm = math.sqrt(s2)
            if abs(norm - radius) <= 1e-3 * radius:
                break
            if norm > radius:
                lo = lam
            else:
                hi = lam
            lam = lam + (norm / radius - 1.0) * s2 / s3  # Newton on 1 / |p| - 1 / radius
            if not lo < lam < hi:
                lam = 0.5 * (lo + hi)
        for j in range(n):
            c[j] = -a[j] / (w[j] + lam)
        if w[0] < 0.0:  # the hard case: along the most negative curvature up to the radius
            short = radius * radius - c @ c
            if short > 0.0:
                c[0] += math.sqrt(short) if c[0] >= 0.0 else -math.sqrt(short)
    p = np.zeros(n)
    for j in range(n):
        for k in range(n):
            p[j] += V[j, k] * c[k]
    norm = math.sqrt(p @ p)
    if norm > radius:
        p *= radius / norm
    return p, limited


@numba.njit(cache=True)
def _step(x, g, H, radius, box):
    """The trial step from x: the trust-region step over the parameters not held on the
    box's faces, then kept in the box by projection or by cutting it back to the first
    face it meets, whichever the model prefers. Returns (step, predicted decrease,
    whether the radius limits it)."""
    n = len(x)
    free = np.flatnonzero(~_held(x, g, box))
    k = len(free)
    p = np.zeros(n)
    if k == 0:
        return p, 0.0, False
    Hf = np.empty((k, k))
    gf = np.empty(k)
    for a in range(k):
        gf[a] = g[free[a]]
        for b in range(k):
            Hf[a, b] = H[free[a], free[b]]
    pf, limited = _subproblem(gf, Hf, radius)
    for a in range(k):
        p[free[a]] = pf[a]
    end = x + p
    if np.any(np.abs(end) > box):
        projected = np.minimum(np.maximum(end, -box), box) - x
        alpha = 1.0
        for j in range(n):
            if p[j] > 0.0:
                alpha = min(alpha, (box - x[j]) / p[j])
            elif p[j] < 0.0:
                alpha = min(alpha, (-box - x[j]) / p[j])
        cut = np.minimum(np.maximum(x + max(alpha, 0.0) * p, -box), box) - x
        if _model_decrease(g, H, projected) >= _model_decrease(g, H, cut):
            p = projected
        else:
            p = cut
    return p, _model_decrease(g, H, p), limited


@numba.njit(cache=True)
def _normal_equations(J, r, g, H):
    """g = J^T r and H = J^T J, in place (loops: P and M are small)."""
    m, n = J.shape
    for j in range(n):
        acc = 0.0
        for k in range(m):
            acc += J[k, j] * r[k]
        g[j] = acc
        for q in range(j, n):
            acc = 0.0
            for k in range(m):
                acc += J[k, j] * J[k, q]
            H[j, q] = acc
            H[q, j] = acc


@numba.njit(cache=True)
def _round(
    x,
    f,
    g,
    H,
    radius,
    x_try,
    pred,
    trials,
    fresh,
    iterations,
    r_try,
    J_try,
    box,
    gtol,
    ftol,
    max_trials,
    max_iter,
    done,
):
    """One round's bookkeeping, in place, for each running problem i just evaluated at
    x_try[i] (residuals r_try[i], Jacobian J_try[i]); done[i] gets its FitStatus or -1.
    Compiled, as :func:`~.bfgs._round` is, so a round of a single small problem costs
    microseconds around its solve. A fresh problem takes its start as it is; otherwise
    the trial is accepted or rejected and the radius updated (module docstring); then a
    running problem gets its next trial point."""
    n, p = x.shape
    radius_max = 2.0 * box * math.sqrt(p)  # the box's diameter
    for i in range(n):
        done[i] = -1
        r = r_try[i]
        J = J_try[i]
        f_t = 0.0
        for k in range(len(r)):
            f_t += 0.5 * r[k] * r[k]
        finite = np.isfinite(f_t) and np.all(np.isfinite(J))
        accept = False
        if fresh[i]:
            fresh[i] = False
            x[i] = x_try[i]
            f[i] = f_t
            if not finite:
                done[i] = _BAD_START
                continue
            accept = True
        else:
            size = 0.0
            for j in range(p):
                size += (x_try[i, j] - x[i, j]) ** 2
            size = math.sqrt(size)
            actual = f[i] - f_t
            rho = actual / pred[i] if finite else -1.0
            if finite and actual > 0.0 and rho >= ETA:
                accept = True
                f_before = f[i]
                x[i] = x_try[i]
                f[i] = f_t
                iterations[i] += 1
                trials[i] = 0
                if rho < RHO_LOW:
                    radius[i] = SHRINK * size
                elif rho > RHO_HIGH and size >= 0.99 * radius[i]:
                    radius[i] = min(GROW * radius[i], radius_max)
                if actual <= ftol * max(abs(f_before), abs(f_t), 1.0):
                    done[i] = _CONVERGED
            else:
                radius[i] = SHRINK * size
                trials[i] += 1
                if trials[i] >= max_trials:
                    done[i] = _LINE_SEARCH
                    continue
        if accept:
            _normal_equations(J, r, g[i], H[i])
            if done[i] < 0:
                held = _held(x[i], g[i], box)
                projected = 0.0
                for j in range(p):
                    if not held[j]:
                        projected = max(projected, abs(g[i, j]))
                if projected <= gtol:
                    done[i] = _CONVERGED
                elif iterations[i] >= max_iter:
                    done[i] = _MAX_ITER
            if done[i] >= 0:
                continue
        step, decrease, limited = _step(x[i], g[i], H[i], radius[i], box)
        if decrease <= ftol * max(abs(f[i]), 1.0) and not limited:
            done[i] = _CONVERGED  # the model expects nothing more from an unconstrained step
            continue
        if not decrease > 0.0:  # a step too small for the model to see in rounding
            done[i] = _LINE_SEARCH
            continue
        x_try[i] = x[i] + step
        pred[i] = decrease


def trust_region(
    fun: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x0: torch.Tensor,
    *,
    max_iter: int = 1024,
    gtol: float = 1e-5,
    ftol: float = 2.2e-9,
    max_trials: int = 30,
    radius0: float | None = None,
    box: float = Z_BOX,
    max_batch: int | None = None,
    deadline: torch.Tensor | None = None,
) -> FitResult:
    """Minimise f = |r(x)|^2 / 2 for each row of x0 (B, P) independently, inside
    |x_i| <= ``box``. ``fun(x, rows)`` takes the points of the problems being evaluated,
    (b, P), with their row indices into x0, (b,), and returns their residuals (b, M)
    and the residuals' Jacobian (b, M, P); a non-finite residual means "not evaluable
    here" (a failed ODE solve, say) and rejects the step. A prior's |x|^2 / 2 is the
    residuals x (an identity block in the Jacobian): the caller appends them.

    Starts outside the box are projected onto it. ``radius0``: the first trust radius
    (default sqrt(P), one prior standard deviation per parameter in z). ``max_batch``
    and ``deadline`` as for :func:`~.bfgs.bfgs` (:func:`.schedule.run`). ``evaluations``
    counts calls of ``fun`` per problem, each a residual and Jacobian evaluation (with
    the native solver's forward sensitivities, 1-2.5 NLL + gradient evaluations)."""
    device, dtype = x0.device, x0.dtype
    x0n = np.clip(x0.detach().to("cpu", torch.float64).numpy(), -box, box)
    n, p = x0n.shape
    first_radius = math.sqrt(p) if radius0 is None else float(radius0)
    x, f = x0n.copy(), np.full(n, np.nan)
    iterations = np.zeros(n, dtype=np.int64)
    evaluations = np.zeros(n, dtype=np.int64)
    limit = None if deadline is None else deadline.detach().cpu().numpy().astype(np.float64)

    def to_device(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device=device, dtype=dtype if a.dtype == np.float64 else torch.long)

    def advance(rs: _Running) -> np.ndarray:
        r_t, J_t = fun(to_device(rs.x_try), to_device(rs.idx))
        r_try = np.ascontiguousarray(r_t.detach().to("cpu", torch.float64).numpy())
        J_try = np.ascontiguousarray(J_t.detach().to("cpu", torch.float64).numpy())
        evaluations[rs.idx] += 1
        its = iterations[rs.idx]
        done = np.empty(len(rs), dtype=np.int64)
        _round(
            rs.x,
            rs.f,
            rs.g,
            rs.H,
            rs.radius,
            rs.x_try,
            rs.pred,
            rs.trials,
            rs.fresh,
            its,
            r_try,
            J_try,
            float(box),
            gtol,
            ftol,
            max_trials,
            max_iter,
            done,
        )
        iterations[rs.idx] = its
        x[rs.idx], f[rs.idx] = rs.x, rs.f
        return done

    start = lambda rows: _Running.start(rows, x0n[rows], first_radius)
    status, seconds = schedule.run(n, start, advance, max_batch=max_batch, deadline=limit)
    return FitResult(
        to_device(x),
        to_device(f),
        torch.from_numpy(iterations),
        torch.from_numpy(evaluations),
        torch.from_numpy(status),
        torch.from_numpy(seconds),
    )
