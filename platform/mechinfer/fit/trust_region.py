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

Geodesic acceleration (Transtrum & Sethna, "Improvements to the Levenberg-Marquardt
algorithm for nonlinear least-squares minimization", 2012; :func:`_accelerated`): in
sloppy fits (E. coli: 20 parameters, 30 observations) the Gauss-Newton step is nearly
always cut by the radius, and the iterates crawl along narrow curved valleys, the radius
cycling between a step that succeeds and one twice as long that the valley's curvature
defeats. So a step the radius limits is first probed: the residuals alone (a plain ODE
solve, a fifth of a Jacobian's cost for E. coli) at x + PROBE v give their second
derivative along v, and the trial point is v + a / 2, a second-order correction that
follows the valley. On the first 64 E. coli SPEC refinements, with the stops below and
``mle.fit``'s first radius, the median number of Jacobian evaluations falls from 52 to
26 (the acceleration alone: to 38), for about as many probes. Evaluating trial points
with a plain solve and the Jacobian only after acceptance does not pay here: 85% of the
trials are accepted, and each would then cost a plain solve more; nor do Broyden updates
of J between Jacobians (tried: as many Jacobians, eight times the plain solves).

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
rejected (the radius has shrunk by SHRINK^max_trials); BAD_START; DEADLINE. With an
absolute tolerance f_atol > 0 (``mle.fit`` uses one in NLL units) also CONVERGED when the
model predicts no more than f_atol from any step within max(radius, sqrt(P)) of an
accepted point (near an optimum the model's predicted decrease estimates f - f*; at a
radius this wide, a radius cut short by a bad step does not make a creeping fit look
converged), or once the last STALL accepted steps decreased f by less than
STALL_SUM f_atol in all (``stall_atol`` sets another sum) (a crawl that would need thousands of evaluations for what
matters: in narrow sloppy valleys the radius stays at 1e-3 - 1e-2 and each step gains
1e-6 - 1e-5). Asking that of each step in a row instead let one slightly larger step
restart the count: 3 of 192 E. coli refinements crawled 300 - 1084 Jacobians; with the
sum, the longest takes 279, and no fit ends further from the best NLL than before. The
sum is STALL_SUM = 20 f_atol (2e-3 in NLL units with ``mle.fit``'s f_atol: 1e-4 a step
on average); with 5 f_atol, on the 1024 E. coli SPEC refinements the longest crawled
935 Jacobians (mean 35.6); with 20, 489 (mean 32.2), 2% of the fits end 1e-3 to 0.036
higher and R2 and R2_true are unchanged (0.9784, 0.9932; mmk's too: 0.9646, 0.9906).

Tried on the first 64 - 192 E. coli SPEC refinements and not kept (Jacobians per case,
the share of cases above the best NLL + 1e-3): a structured secant model of the
residuals' curvature (Dennis, Gay & Welsch's update, NL2SOL's choice of model per step:
median 26 -> 44); a plain solve first for the trial after the radius grew (the
Jacobian only if it is accepted: 3 Jacobians fewer a case for 13 plain solves more, no
faster); radius rules (growth 1.5 or Nielsen's continuous factor, growth only for
rho > 0.9, shrinking to 0.5 |p| or Moré's interpolation after a rejection, no probe
below radius 0.05): means within +-2 Jacobians, and each of them lost one fit's long
crawl to a better optimum (0.7 in NLL).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from ..models import priors
from . import schedule
from .schedule import FitResult, FitStatus, Rows

Z_BOX = priors.Z_MAX  # 7.94: |z| of a quantity on its prior bound
ETA = 1e-4  # accept a step when actual decrease >= ETA * predicted
RHO_LOW, RHO_HIGH = 0.25, 0.75  # shrink below, grow above (Nocedal & Wright's constants)
SHRINK, GROW = 0.25, 2.0  # the new radius: SHRINK |p| after a poor step, GROW radius after a very good one
PROBE = 0.1  # geodesic acceleration: the residuals' second derivative along v from r(x + PROBE v)
STALL, STALL_SUM = 20, 20.0  # with f_atol: stop once the last STALL accepted steps decreased f by < STALL_SUM f_atol
ALL_ROUNDS = 1 << 40  # rounds(state, k): no limit but the fit's own (max_iter, max_trials)
ACCEL_MAX = 0.75  # ... and the acceleration a is used when 2 |a| <= ACCEL_MAX |v| (Transtrum & Sethna's alpha)

# error_model="numpy": a division by zero that no guard foresaw gives inf or NaN, a step
# that is then rejected and stops that problem's fit (LINE_SEARCH), instead of a
# ZeroDivisionError that would end every fit of the batch (numba's default, Python's)
_NJIT = numba.njit(cache=True, error_model="numpy")

_CONVERGED, _MAX_ITER, _LINE_SEARCH, _BAD_START = (
    int(s) for s in (FitStatus.CONVERGED, FitStatus.MAX_ITER, FitStatus.LINE_SEARCH, FitStatus.BAD_START)
)


@dataclass
class _Running(Rows):
    """The problems being minimised, one row each: their rows of x0 (``idx``), point,
    value, gradient J^T r, Gauss-Newton Hessian J^T J, residuals r and Jacobian J there,
    trust radius, trial point and the decrease the model predicts there, rejected steps in
    a row, whether the problem is yet to be evaluated (``fresh``: its trial point is its
    start), and for geodesic acceleration: whether the trial point is a probe x + PROBE v
    (residuals only), the Gauss-Newton step v and its Levenberg parameter; and the
    eigendecomposition of the Gauss-Newton Hessian over the parameters free to move
    from x (:func:`_decompose`); the decreases of the last STALL accepted steps (``decs``,
    a ring by iteration, inf before there are STALL)."""

    x: np.ndarray
    f: np.ndarray
    g: np.ndarray
    H: np.ndarray
    r: np.ndarray
    J: np.ndarray
    radius: np.ndarray
    x_try: np.ndarray
    pred: np.ndarray
    trials: np.ndarray
    fresh: np.ndarray
    probe: np.ndarray
    v: np.ndarray
    lam: np.ndarray
    free: np.ndarray
    w: np.ndarray
    V: np.ndarray
    a: np.ndarray
    nfree: np.ndarray
    decs: np.ndarray

    @classmethod
    def start(cls, rows: np.ndarray, x0: np.ndarray, radius0: float, m: int) -> _Running:
        b, p = x0.shape
        return cls(
            idx=rows,
            x=x0.copy(),
            f=np.zeros(b),
            g=np.zeros((b, p)),
            H=np.zeros((b, p, p)),
            r=np.zeros((b, m)),
            J=np.zeros((b, m, p)),
            radius=np.full(b, radius0),
            x_try=x0.copy(),
            pred=np.zeros(b),
            trials=np.zeros(b, dtype=np.int64),
            fresh=np.ones(b, dtype=bool),
            probe=np.zeros(b, dtype=bool),
            v=np.zeros((b, p)),
            lam=np.zeros(b),
            free=np.zeros((b, p), dtype=np.int64),
            w=np.zeros((b, p)),
            V=np.zeros((b, p, p)),
            a=np.zeros((b, p)),
            nfree=np.zeros(b, dtype=np.int64),
            decs=np.full((b, STALL), np.inf),
        )


@_NJIT
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


@_NJIT
def _held(x, g, box):
    """Parameters on a face of the box whose gradient points out of it: held there."""
    return ((x >= box) & (g < 0.0)) | ((x <= -box) & (g > 0.0))


@_NJIT
def _subproblem_eig(w, V, a, radius):
    """argmin g.p + p.H p / 2 over |p| <= radius for a positive semidefinite H, and
    whether the radius limits it. In H's eigenbasis (H = V diag(w) V^T, a = V^T g) the
    step is p(lam) = -V a / (w + lam): lam = 0 if that is inside (the pseudo-inverse
    step, zero along directions H does not see, where g has no component either), else
    the lam > 0 with |p(lam)| = radius, by safeguarded Newton on 1/|p(lam)| - 1/radius
    from below (Nocedal & Wright Alg. 4.3; monotone from there). In their hard case (H
    indefinite, g with no component along its most negative curvature) lam falls to -w_0,
    where w_0 + lam is 0 to rounding (Fujita_SciSignal2010's prior starts reach it): that
    term is then left out, and the step goes along that direction up to the radius. |p|
    <= radius always (a last rescaling makes sure). Returns (p, whether the radius limits
    it, lam)."""
    n = len(w)
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
    lam = 0.0
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
                if d > 0.0:
                    q = (a[j] / d) ** 2  # as (a / d)^2 / d, not a^2 / d^3: d^3 overflows for d > 1e102
                    s2 += q
                    s3 += q / d
                elif a[j] != 0.0:  # lam at -w_j to rounding: |p| is unbounded there
                    s2 = math.inf
            norm = math.sqrt(s2)
            if abs(norm - radius) <= 1e-3 * radius:
                break
            if norm > radius:
                lo = lam
            else:
                hi = lam
            if s3 > 0.0:
                lam = lam + (norm / radius - 1.0) * s2 / s3  # Newton on 1 / |p| - 1 / radius
            if not (s3 > 0.0 and lo < lam < hi):  # bisection where Newton's step is undefined or leaves the bracket
                lam = 0.5 * (lo + hi)
        for j in range(n):
            d = w[j] + lam
            c[j] = -a[j] / d if d > 0.0 else 0.0
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
    return p, limited, lam


@_NJIT
def _eigh(A, w, V):
    """The eigenvalues of the symmetric matrix A (k, k), ascending, into w, and its
    eigenvectors, V's columns: Householder reduction to a tridiagonal matrix, its
    transformations accumulated in V, then the implicit QL iteration with Wilkinson's
    shift on it, V rotated along (the algorithm of EISPACK's tred2 and tql2). Why not
    np.linalg.eigh: for the trust region's k <= ~30, LAPACK's dsyevd (and dsyev) take
    ~29 us at k = 20 on this machine, more than the step they serve, this ~18 us; it runs
    once per accepted point. Non-finite A gives non-finite w and V (no exception)."""
    n = A.shape[0]
    e = np.zeros(n)
    for i in range(n):
        for j in range(n):
            V[i, j] = A[i, j]
    for j in range(n):
        w[j] = V[n - 1, j]
    for i in range(n - 1, 0, -1):  # Householder: row i's part left of the diagonal to a multiple of e_{i-1}
        scale = 0.0
        h = 0.0
        for k in range(i):
            scale += abs(w[k])
        if scale == 0.0:
            e[i] = w[i - 1]
            for j in range(i):
                w[j] = V[i - 1, j]
                V[i, j] = 0.0
                V[j, i] = 0.0
        else:
            for k in range(i):
                w[k] /= scale
                h += w[k] * w[k]
            f = w[i - 1]
            g = math.sqrt(h)
            if f > 0.0:
                g = -g
            e[i] = scale * g
            h -= f * g
            w[i - 1] = f - g
            for j in range(i):
                e[j] = 0.0
            for j in range(i):
                f = w[j]
                V[j, i] = f
                g = e[j] + V[j, j] * f
                for k in range(j + 1, i):
                    g += V[k, j] * w[k]
                    e[k] += V[k, j] * f
                e[j] = g
            f = 0.0
            for j in range(i):
                e[j] /= h
                f += e[j] * w[j]
            hh = f / (h + h)
            for j in range(i):
                e[j] -= hh * w[j]
            for j in range(i):
                f = w[j]
                g = e[j]
                for k in range(j, i):
                    V[k, j] -= f * e[k] + g * w[k]
                w[j] = V[i - 1, j]
                V[i, j] = 0.0
        w[i] = h
    for i in range(n - 1):  # accumulate the transformations
        V[n - 1, i] = V[i, i]
        V[i, i] = 1.0
        h = w[i + 1]
        if h != 0.0:
            for k in range(i + 1):
                w[k] = V[k, i + 1] / h
            for j in range(i + 1):
                g = 0.0
                for k in range(i + 1):
                    g += V[k, i + 1] * V[k, j]
                for k in range(i + 1):
                    V[k, j] -= g * w[k]
        for k in range(i + 1):
            V[k, i + 1] = 0.0
    for j in range(n):
        w[j] = V[n - 1, j]
        V[n - 1, j] = 0.0
    V[n - 1, n - 1] = 1.0
    for i in range(1, n):  # QL on the tridiagonal (diagonal w, subdiagonal e)
        e[i - 1] = e[i]
    e[n - 1] = 0.0
    f = 0.0
    largest = 0.0
    eps = 2.0**-52
    for lo in range(n):
        largest = max(largest, abs(w[lo]) + abs(e[lo]))
        m = lo
        while m < n - 1 and not abs(e[m]) <= eps * largest:  # the first negligible subdiagonal element
            m += 1
        if m > lo:
            for _ in range(64):
                g = w[lo]
                p = (w[lo + 1] - g) / (2.0 * e[lo])
                r = math.hypot(p, 1.0)
                if p < 0.0:
                    r = -r
                w[lo] = e[lo] / (p + r)
                w[lo + 1] = e[lo] * (p + r)
                next_w = w[lo + 1]
                h = g - w[lo]
                for i in range(lo + 2, n):
                    w[i] -= h
                f += h
                p = w[m]
                c = 1.0
                c2 = c
                c3 = c
                next_e = e[lo + 1]
                s = 0.0
                s2 = 0.0
                for i in range(m - 1, lo - 1, -1):
                    c3 = c2
                    c2 = c
                    s2 = s
                    g = c * e[i]
                    h = c * p
                    r = math.hypot(p, e[i])
                    e[i + 1] = s * r
                    s = e[i] / r
                    c = p / r
                    p = c * w[i] - s * g
                    w[i + 1] = h + s * (c * g + s * w[i])
                    for k in range(n):
                        h = V[k, i + 1]
                        V[k, i + 1] = s * V[k, i] + c * h
                        V[k, i] = c * V[k, i] - s * h
                p = -s * s2 * c3 * next_e * e[lo] / next_w
                e[lo] = s * p
                w[lo] = c * p
                if not abs(e[lo]) > eps * largest:
                    break
        w[lo] = w[lo] + f
        e[lo] = 0.0
    for i in range(n - 1):  # ascending, as LAPACK's
        k = i
        p = w[i]
        for j in range(i + 1, n):
            if w[j] < p:
                k = j
                p = w[j]
        if k != i:
            w[k] = w[i]
            w[i] = p
            for j in range(n):
                p = V[j, i]
                V[j, i] = V[j, k]
                V[j, k] = p


@_NJIT
def _decompose(x, g, H, box, free, w, V, a):
    """The eigendecomposition the steps from x take: of the Gauss-Newton Hessian over the
    parameters not held on the box's faces. Fills free[:k] (their indices), w[:k],
    V[:k, :k] (H's eigenvalues and vectors over them) and a[:k] = V^T g; returns k.
    Done once per accepted point (~18 us for P = 20, :func:`_eigh`): the steps after
    rejections there and the acceleration reuse it."""
    idx = np.flatnonzero(~_held(x, g, box))
    k = len(idx)
    if k == 0:
        return 0
    Hf = np.empty((k, k))
    for i in range(k):
        free[i] = idx[i]
        for j in range(k):
            Hf[i, j] = H[idx[i], idx[j]]
    wk, Vk = np.empty(k), np.empty((k, k))
    _eigh(Hf, wk, Vk)
    for i in range(k):
        w[i] = wk[i]
        acc = 0.0
        for j in range(k):
            V[i, j] = Vk[i, j]
            acc += Vk[j, i] * g[idx[j]]
        a[i] = acc
    return k


@_NJIT
def _step(x, g, H, radius, box, free, w, V, a, k):
    """The trial step from x: the trust-region step over the parameters not held on the
    box's faces (:func:`_decompose`: free[:k], w, V, a), then kept in the box by
    projection or by cutting it back to the first face it meets, whichever the model
    prefers. Returns (step, predicted decrease, whether the radius limits it, the
    Levenberg parameter lam of the subproblem, whether the box changed the step)."""
    n = len(x)
    p = np.zeros(n)
    if k == 0:
        return p, 0.0, False, 0.0, False
    pf, limited, lam = _subproblem_eig(w[:k], V[:k, :k], a[:k], radius)
    for j in range(k):
        p[free[j]] = pf[j]
    end = x + p
    boxed = bool(np.any(np.abs(end) > box))
    if boxed:
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
    return p, _model_decrease(g, H, p), limited, lam, boxed


@_NJIT
def _accelerated(x, r, J, v, lam, r_probe, box, free, w, V, k):
    """Geodesic acceleration (Transtrum & Sethna 2012): the second-order correction of the
    Gauss-Newton step v, from the residuals at the probe x + PROBE v. With r_vv the
    residuals' second directional derivative along v, by finite differences,
    r_vv ~ 2 / h ((r(x + h v) - r(x)) / h - J v), the acceleration a solves
    (J^T J + lam I) a = -J^T r_vv over the parameters v's step moves (free[:k], whose
    eigendecomposition w, V :func:`_decompose` gave; lam: v's Levenberg parameter). The
    step v + a / 2 follows the curved path (the geodesic) along which the residuals
    change as the linear model says they change along v, so a long step along a curved
    valley floor succeeds where v alone is cut to a small radius. Returns the step,
    inside the box, or v where the acceleration is unusable: a failed probe, or
    2 |a| > ACCEL_MAX |v| (the path too curved for its expansion)."""
    n = len(x)
    m = len(r)
    h = PROBE
    rvv = np.empty(m)
    for q in range(m):
        jv = 0.0
        for j in range(n):
            jv += J[q, j] * v[j]
        rvv[q] = 2.0 / h * ((r_probe[q] - r[q]) / h - jv)
    if k == 0 or not np.all(np.isfinite(rvv)):
        return v
    b = np.zeros(k)  # V^T J_f^T r_vv
    for i in range(k):
        acc = 0.0
        for q in range(m):
            acc += J[q, free[i]] * rvv[q]
        b[i] = acc
    c = np.zeros(k)
    for j in range(k):
        for i in range(k):
            c[j] += V[i, j] * b[i]
    floor = 1e-12 * max(abs(w[0]), abs(w[k - 1]), 1e-300)
    accel = np.zeros(k)
    for j in range(k):
        d = w[j] + lam
        if d > floor:
            for i in range(k):
                accel[i] -= V[i, j] * c[j] / d
    if not 2.0 * math.sqrt(accel @ accel) <= ACCEL_MAX * math.sqrt(v @ v):
        return v
    p = v.copy()
    for i in range(k):
        p[free[i]] += 0.5 * accel[i]
    for j in range(n):
        p[j] = min(max(x[j] + p[j], -box), box) - x[j]
    return p


@_NJIT
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


@_NJIT
def _round(
    x,
    f,
    g,
    H,
    r_cur,
    J_cur,
    radius,
    x_try,
    pred,
    trials,
    fresh,
    probe,
    v,
    lam,
    free,
    w,
    V,
    a,
    nfree,
    decs,
    idx,
    x_all,
    f_all,
    iterations,
    evaluations,
    r_try,
    J_try,
    box,
    gtol,
    ftol,
    f_atol,
    stall_atol,
    accelerate,
    max_trials,
    max_iter,
    done,
):
    """One round's bookkeeping, in place, for each running problem i just evaluated at
    x_try[i] (residuals r_try[i] and, unless x_try[i] was a probe, Jacobian J_try[i]);
    done[i] gets its FitStatus or -1. Compiled, as :func:`~.bfgs._round` is, so a round
    of a single small problem costs microseconds around its solve; it also counts the
    evaluation and writes the point and value back to the whole batch's rows (idx[i]
    of x_all, f_all, iterations, evaluations). A probe gives the accelerated trial
    point; a fresh problem takes its start as it is; otherwise the trial is accepted or
    rejected and the radius updated (module docstring); then a running problem gets its
    next trial point, or first a probe along its step."""
    n, p = x.shape
    radius_max = 2.0 * box * math.sqrt(p)  # the box's diameter
    radius_wide = math.sqrt(p)  # one prior standard deviation per parameter in z
    for i in range(n):
        row = idx[i]
        if not probe[i]:
            evaluations[row] += 1
        done[i] = _one(
            i, x, f, g, H, r_cur, J_cur, radius, x_try, pred, trials, fresh, probe, v, lam, free, w, V, a, nfree,
            decs, r_try[i], J_try[i], iterations, row, box, gtol, ftol, f_atol, stall_atol, accelerate, max_trials,
            max_iter,
            radius_max, radius_wide,
        )  # fmt: skip
        x_all[row] = x[i]
        f_all[row] = f[i]


@_NJIT
def _one(
    i, x, f, g, H, r_cur, J_cur, radius, x_try, pred, trials, fresh, probe, v, lam, free, w, V, a, nfree,
    decs, r, J, iterations, row, box, gtol, ftol, f_atol, stall_atol, accelerate, max_trials, max_iter, radius_max,
    radius_wide,
):  # fmt: skip
    """:func:`_round` for problem i (row ``row`` of the whole batch): its FitStatus or -1."""
    p = x.shape[1]
    if probe[i]:
        probe[i] = False
        x_try[i] = x[i] + _accelerated(x[i], r_cur[i], J_cur[i], v[i], lam[i], r, box, free[i], w[i], V[i], nfree[i])
        return -1
    f_t = 0.0
    for k in range(len(r)):
        f_t += 0.5 * r[k] * r[k]
    finite = np.isfinite(f_t) and np.all(np.isfinite(J))
    accept = False
    status = -1
    if fresh[i]:
        fresh[i] = False
        x[i] = x_try[i]
        f[i] = f_t
        if not finite:
            return _BAD_START
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
            iterations[row] += 1
            trials[i] = 0
            if rho < RHO_LOW:
                radius[i] = SHRINK * size
            elif rho > RHO_HIGH and size >= 0.99 * radius[i]:
                radius[i] = min(GROW * radius[i], radius_max)
            if actual <= ftol * max(abs(f_before), abs(f_t), 1.0):
                status = _CONVERGED
            decs[i, iterations[row] % STALL] = actual
            if np.sum(decs[i]) < stall_atol:
                status = _CONVERGED  # creeping: the last STALL steps gained < stall_atol in all
        else:
            radius[i] = SHRINK * size
            trials[i] += 1
            if trials[i] >= max_trials or not radius[i] > 0.0:
                return _LINE_SEARCH
    if accept:
        r_cur[i] = r
        J_cur[i] = J
        _normal_equations(J, r, g[i], H[i])
        if status < 0:
            held = _held(x[i], g[i], box)
            projected = 0.0
            for j in range(p):
                if not held[j]:
                    projected = max(projected, abs(g[i, j]))
            if projected <= gtol:
                status = _CONVERGED
            elif iterations[row] >= max_iter:
                status = _MAX_ITER
        if status >= 0:
            return status
        nfree[i] = _decompose(x[i], g[i], H[i], box, free[i], w[i], V[i], a[i])
    k = nfree[i]
    step, decrease, limited, lam_i, boxed = _step(x[i], g[i], H[i], radius[i], box, free[i], w[i], V[i], a[i], k)
    if decrease <= ftol * max(abs(f[i]), 1.0) and not limited:
        return _CONVERGED  # the model expects nothing more from an unconstrained step
    if accept and f_atol > 0.0:
        # nothing worth f_atol within a prior standard deviation, by the model
        wide = decrease
        if radius[i] < radius_wide and limited:
            wide = _step(x[i], g[i], H[i], radius_wide, box, free[i], w[i], V[i], a[i], k)[1]
        if wide <= f_atol:
            return _CONVERGED
    if not decrease > 0.0:  # a step too small for the model to see in rounding
        return _LINE_SEARCH
    pred[i] = decrease
    if accelerate and limited and not boxed:
        probe[i] = True
        v[i] = step
        lam[i] = lam_i
        x_try[i] = x[i] + PROBE * step
    else:
        x_try[i] = x[i] + step
    return -1


def _numpy(a) -> np.ndarray:
    """A float64 C-contiguous numpy copy of a tensor or array (no copy when it is one)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.ascontiguousarray(a, dtype=np.float64)


Array = torch.Tensor | np.ndarray
# (points, rows) -> residuals, or (residuals, Jacobian): tensors in, or numpy arrays with numpy_io
Residuals = Callable[[Array, Array], Array]


def trust_region(
    fun: Callable[[Array, Array], tuple[Array, Array]],
    x0: torch.Tensor,
    *,
    residuals_only: Residuals | None = None,
    rounds: Callable[[tuple, int], int] | None = None,
    max_iter: int = 1024,
    gtol: float = 1e-5,
    ftol: float = 2.2e-9,
    f_atol: float = 0.0,
    stall_atol: float | None = None,
    accelerate: bool = True,
    numpy_io: bool = False,
    max_trials: int = 30,
    radius0: float | None = None,
    box: float = Z_BOX,
    max_batch: int | None = None,
    deadline: torch.Tensor | None = None,
) -> FitResult:
    """Minimise f = |r(x)|^2 / 2 for each row of x0 (B, P) independently, inside
    |x_i| <= ``box``. ``fun(x, rows)`` takes the points of the problems being evaluated,
    (b, P), with their row indices into x0, (b,), and returns their residuals (b, M)
    and the residuals' Jacobian (b, M, P) (tensors or numpy arrays); a non-finite
    residual means "not evaluable here" (a failed ODE solve, say) and rejects the step.
    A prior's |x|^2 / 2 is the residuals x (an identity block in the Jacobian): the
    caller appends them. ``residuals_only(x, rows)``: the residuals alone, for the
    acceleration's probes, where they cost less than with the Jacobian (a plain ODE
    solve instead of forward sensitivities); default ``fun``'s, its Jacobian unused.

    ``rounds(state, k)``: where ``fun`` has a compiled form (evaluating the same rows as
    it), up to k rounds of the running problems without returning to Python (``state``:
    :func:`_round`'s arguments but the trial points' residuals and Jacobians; it stops
    after the round in which a problem finished and returns how many it ran): for a
    refinement's few problems the interpreter's share of a round is largest. As many
    rounds at a time as the first deadline leaves time for, at the last round's pace.

    ``numpy_io``: ``fun`` and ``residuals_only`` take numpy arrays (float64 points,
    int64 rows) rather than tensors (saves two conversions a round, which at the batch
    of one refinement cost as much as an mmk solve).

    ``accelerate``: geodesic acceleration (:func:`_accelerated`) of steps the radius
    limits, one residuals-only probe each. ``f_atol``: also CONVERGED once an accepted
    point's quadratic model predicts a decrease of at most f_atol within
    max(radius, sqrt(P)) of it, whatever the step the radius allows (0: off): for a
    likelihood, an absolute tolerance in NLL units, beyond which decreases do not
    matter for the estimate. ``stall_atol``: CONVERGED once the last STALL accepted steps
    decreased f by less than this in all (default STALL_SUM f_atol; 0: off).

    Starts outside the box are projected onto it. ``radius0``: the first trust radius
    (default sqrt(P), one prior standard deviation per parameter in z). ``max_batch``
    and ``deadline`` as for :func:`~.bfgs.bfgs` (:func:`.schedule.run`). ``evaluations``
    counts calls of ``fun`` per problem, each a residual and Jacobian evaluation (with
    the native solver's forward sensitivities, 1-2.5 NLL + gradient evaluations); the
    probes (calls of ``residuals_only``) are not counted: with the native solver each
    costs a plain solve, about a sixth of a ``fun`` call for E. coli."""
    device, dtype = x0.device, x0.dtype
    x0n = np.clip(x0.detach().to("cpu", torch.float64).numpy(), -box, box)
    n, p = x0n.shape
    first_radius = math.sqrt(p) if radius0 is None else float(radius0)
    x, f = x0n.copy(), np.full(n, np.nan)
    iterations = np.zeros(n, dtype=np.int64)
    evaluations = np.zeros(n, dtype=np.int64)
    limit = None if deadline is None else deadline.detach().cpu().numpy().astype(np.float64)
    n_res = [0]  # M, the number of residuals, once known
    plain = residuals_only if residuals_only is not None else (lambda z, rows: fun(z, rows)[0])

    def to_device(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device=device, dtype=dtype if a.dtype == np.float64 else torch.long)

    arg = (lambda a: a) if numpy_io else to_device

    stops = (float(box), gtol, ftol, f_atol, STALL_SUM * f_atol if stall_atol is None else float(stall_atol))
    limits = (accelerate, max_trials, max_iter)
    per_round = [math.inf]  # seconds a round of the running problems took, last measured

    def state(rs: _Running) -> tuple:
        arrays = (rs.x, rs.f, rs.g, rs.H, rs.r, rs.J, rs.radius, rs.x_try, rs.pred, rs.trials, rs.fresh, rs.probe)
        eigen = (rs.v, rs.lam, rs.free, rs.w, rs.V, rs.a, rs.nfree, rs.decs)
        return (*arrays, *eigen, rs.idx, x, f, iterations, evaluations)

    def advance(rs: _Running) -> np.ndarray:
        b = len(rs)
        done = np.empty(b, dtype=np.int64)
        if rounds is not None and rs.r.shape[1] == n_res[0] > 0:
            k = ALL_ROUNDS
            if limit is not None:  # the rounds that fit before the first deadline, at the last round's pace
                k = int(min(max((limit[rs.idx].min() - time.time()) / per_round[0], 1.0), ALL_ROUNDS))
            tic = time.perf_counter()
            ran = rounds((*state(rs), *stops, *limits, done), k)
            per_round[0] = (time.perf_counter() - tic) / max(ran, 1)
            return done
        tic = time.perf_counter()
        n_plain = int(rs.probe[0]) if b == 1 else int(np.count_nonzero(rs.probe))
        if n_plain == b:  # all probes: residuals only
            r_try = _numpy(plain(arg(rs.x_try), arg(rs.idx)))
            J_try = rs.J  # unused for probes
        else:
            full = None if n_plain == 0 else ~rs.probe
            xs, ids = (rs.x_try, rs.idx) if full is None else (rs.x_try[full], rs.idx[full])
            r_t, J_t = fun(arg(xs), arg(ids))
            r_full, J_full = _numpy(r_t), _numpy(J_t)
            if n_res[0] != r_full.shape[1]:  # the first round: M is known now
                n_res[0] = r_full.shape[1]
                rs.r, rs.J = np.zeros((b, n_res[0])), np.zeros((b, n_res[0], p))
            if full is None:
                r_try, J_try = r_full, J_full
            else:
                r_try, J_try = np.empty_like(rs.r), np.empty_like(rs.J)
                r_try[full], J_try[full] = r_full, J_full
                r_try[rs.probe] = _numpy(plain(arg(rs.x_try[rs.probe]), arg(rs.idx[rs.probe])))
        _round(*state(rs), r_try, J_try, *stops, *limits, done)  # type: ignore[call-arg]
        per_round[0] = time.perf_counter() - tic
        return done

    start = lambda rows: _Running.start(rows, x0n[rows], first_radius, n_res[0])
    status, seconds = schedule.run(n, start, advance, max_batch=max_batch, deadline=limit)
    return FitResult(
        to_device(x),
        to_device(f),
        torch.from_numpy(iterations),
        torch.from_numpy(evaluations),
        torch.from_numpy(status),
        torch.from_numpy(seconds),
    )
