"""The refine stage, one for every caller: ``Estimator.infer``, bulk estimation and the
Serve app each run the network, then these three steps on its rows:

1. :func:`select`: which rows to refine (``refine`` False / True / "auto": the rows whose
   network estimate fails the goodness-of-fit check, or cannot be judged), and the
   status of the others;
2. :func:`polish`: refine them (each row its own fit; the callers differ only in where
   this runs: in process, in Ray tasks, in the Serve app's Refiner deployment);
3. :func:`combine`: a refined row takes the fit's point and approximation, a row whose fit
   did not move keeps the network's answer.

A row is a mapping of :data:`FIELDS` (arrays with a leading batch axis, or one row's
values): the Serve app's cases are single rows, the others batches.

The refinement itself is one start per row from the network's estimate (with
``starts`` > 1 also from draws of that estimate's Laplace approximation,
:func:`posterior_starts`, the lowest NLL answered) with
:func:`mechinfer.fit.mle.fit`, by ``method`` (default :data:`METHOD`, the trust region:
Gauss-Newton steps on exact sensitivities, a handful of evaluations near an optimum, every
iterate inside the z box; "bfgs" stays selectable). Where some observation's noise is
Laplace (a PEtab problem may say so), the trust region does not apply and BFGS refines
instead (:func:`mechinfer.fit.mle.method_for`); :attr:`Refined.method` says which ran.
Together with it runs the maximum a posteriori fit (the N(0, I) prior added) that centres
the Laplace approximation of the intervals (see :mod:`mechinfer.estimate.uncertainty`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..config import MAX_REFINE_STARTS, REFINE_METHOD, REFINE_STARTS
from ..fit import mle
from ..fit.bfgs import FitStatus
from ..fit.trust_region import Z_BOX
from . import uncertainty
from .uncertainty import Laplace

METHOD = REFINE_METHOD
MAX_STARTS = MAX_REFINE_STARTS
STARTS_SEED = 20231205  # the draws of posterior_starts (SPEC's test-set seed; any fixed one would do)
STATUS = {  # SPEC 7's refine_status of a fit that ended so
    FitStatus.CONVERGED: "converged",
    FitStatus.LINE_SEARCH: "converged",  # no step lowers the NLL further: a minimum to the solver's accuracy
    FitStatus.MAX_ITER: "iteration_limit",
    FitStatus.DEADLINE: "deadline",
    FitStatus.BAD_START: "failed",
}
# A row's fields that a refinement replaces (``refine_status`` and ``refined`` besides)
FIELDS = ("z", "nll", "gof_pvalue", "center", "cov_z", "p_eff")
# A start on a plateau: with wide priors a network's estimate may sit where no parameter
# moves the predictions (Fujita_SciSignal2010's networks at the small preset: every
# prediction 0, NLLs of 1e4 - 1e26, gradients of 1e-33 - 1e-21), and every optimiser stops
# there at once. A row whose fit from its start took no step, and whose residuals there
# fail the goodness-of-fit test at this level (no parameter counted), gets a second
# start at the prior's median (z = 0); the better of the two is kept (on five such Fujita
# test rows: three end near their true parameters' NLL).
PLATEAU_PVALUE = 1e-6


def mode(refine) -> str:
    """False / True / "auto" as "never" / "always" / "auto" (the bulk job's names are
    accepted too)."""
    if refine is False or refine is None or refine == "never":
        return "never"
    if refine is True or refine == "always":
        return "always"
    if refine == "auto":
        return "auto"
    raise ValueError(f"refine must be False, True or 'auto', got {refine!r}")


def check_method(method: str) -> str:
    if method not in mle.METHODS:
        raise ValueError(f"refine method must be one of {list(mle.METHODS)}, got {method!r}")
    return method


def select(refine, z: np.ndarray, gof_pvalue: np.ndarray, auto_pvalue: float) -> tuple[np.ndarray, np.ndarray]:
    """(todo (B,) bool, refine_status (B,) object) for the network's estimates z (B, P)
    and their gof p-values: the rows to refine, and the status of every other row
    ("not_requested", "skipped": "auto" found the estimate fits, "failed": no fit starts
    from a non-finite estimate). The rows to refine get their status from :func:`polish`."""
    how = mode(refine)
    b = len(z)
    status = np.full(b, "not_requested", dtype=object)
    if how == "never":
        return np.zeros(b, bool), status
    todo = np.ones(b, bool) if how == "always" else ~(np.asarray(gof_pvalue) >= auto_pvalue)  # NaN: cannot judge
    status[~todo] = "skipped"
    finite = np.isfinite(z).all(axis=1)
    status[todo & ~finite] = "failed"
    return todo & finite, status


@dataclass
class Refined:
    """Refined rows: the maximum-likelihood fit and the approximation for its intervals."""

    z: np.ndarray  # (B, P) the maximum-likelihood fit, or the start where ``kept``
    nll: np.ndarray  # (B,) at z
    kept: np.ndarray  # (B,) bool: the fit failed (or its deadline came before its first step): z is the start
    refine_status: np.ndarray  # (B,) object
    laplace: Laplace  # at the maximum a posteriori point (its centre and covariance)
    gof_pvalue: np.ndarray  # (B,) of the fit's NLL against laplace.p_eff
    method: str = METHOD  # the optimizer that ran (BFGS where the trust region does not apply)

    def rows(self) -> dict[str, np.ndarray]:
        """As the rows :func:`combine` takes."""
        lap = self.laplace
        return {
            "z": self.z,
            "nll": self.nll,
            "gof_pvalue": self.gof_pvalue,
            "center": lap.center,
            "cov_z": lap.cov_z,
            "p_eff": lap.p_eff,
            "kept": self.kept,
            "refine_status": self.refine_status,
        }


def polish(
    model, t, channel, value, z, *, deadline=None, method: str = METHOD, starts: int = REFINE_STARTS, **fit_options
) -> Refined:
    """Refine z (B, P), the network's estimates, into maximum-likelihood fits, and find
    the maximum a posteriori points for the Laplace approximation that gives the
    intervals: centred there, the intervals are calibrated, where the same approximation
    at the maximum-likelihood fit covers the truth less often than its level (measured on
    the SPEC test set; see :mod:`mechinfer.estimate.uncertainty`). Both start from z, as
    one batched fit of 2B problems (neither waits for the other), each stopped at
    ``deadline`` (wall-clock ``time.time()``, one per row or one for all). A start on a
    plateau gets a second one (:data:`PLATEAU_PVALUE`).

    ``starts`` > 1: each row's maximum-likelihood fit also runs from ``starts - 1``
    draws of the network estimate's own Laplace approximation (:func:`posterior_starts`),
    in the same batch, and the lowest NLL wins. The maximum a posteriori fit then runs
    once, from the start that won (z or that draw), so that the intervals describe the
    basin of the optimum answered; run beside the others from z it would be wasted
    wherever a draw wins (on Boehm's measurements with 4 starts, 38 of 657 evaluations)."""
    b = len(z)
    starts = check_starts(starts)
    if deadline is not None:  # each row's fits stop at its deadline
        deadline = np.broadcast_to(np.asarray(deadline, dtype=np.float64), (b,))
    method = mle.method_for(model, check_method(method))

    def fit(rows, start, prior):
        return mle.fit(
            model,
            t[rows],
            channel[rows],
            value[rows],
            start,
            deadline=None if deadline is None else deadline[rows],
            prior=prior,
            method=method,
            **fit_options,
        )

    everyone = np.arange(b)
    extra = posterior_starts(model, t, channel, value, z, starts - 1).reshape(-1, z.shape[1])
    n_ml = b * starts  # the maximum-likelihood fits: from z (rows 0..B-1), then from the draws
    # with one start, the maximum a posteriori fits from z run in the same batch (neither
    # waits for the other); with more, each row's runs after them, from the start that won
    together = starts == 1
    n_map = b if together else 0
    fits = fit(
        np.r_[everyone, np.repeat(everyone, starts - 1), everyone[:n_map]],
        np.concatenate([z, extra, z[:n_map]]),
        np.repeat([False, True], [n_ml, n_map]),
    )
    map_start = z.copy()  # where each row's maximum a posteriori fit starts, if it runs alone
    flat = _plateaus(model, t, channel, value, z, fits)
    if len(flat):  # their second start: the prior's median
        both = np.r_[flat, flat + n_ml] if together else flat  # their fits to replace
        again = fit(np.r_[flat, flat] if together else flat, np.zeros((len(both), z.shape[1])), both >= n_ml)
        better = np.isfinite(again.nll) & ~(fits.nll[both] <= again.nll)
        for name in ("z", "theta", "nll", "status"):
            getattr(fits, name)[both[better]] = getattr(again, name)[better]
        map_start[flat[better[: len(flat)]]] = 0.0
    status = _statuses(fits.status[:b])
    # kept: the fit failed, or its deadline stopped it before its first step (its point is the start)
    stopped = (status == "deadline") & (fits.z[:b] == z).all(axis=1)
    kept = ~np.isfinite(fits.nll[:b]) | ~np.isfinite(fits.z[:b]).all(axis=1) | stopped
    status[kept & (status != "deadline")] = "failed"
    z_ml = np.where(kept[:, None], z, fits.z[:b])
    nll = fits.nll[:b].copy()
    if kept.any():  # a kept row's NLL at its start: one plain solve, for those rows only
        nll[kept] = mle.nll(model, t[kept], channel[kept], value[kept], z_ml[kept])
    if starts > 1:
        won = _draws_that_win(fits, b, starts - 1, nll)
        rows = np.flatnonzero(won >= 0)
        pick = b + rows * (starts - 1) + won[rows]
        z_ml[rows], nll[rows], kept[rows] = fits.z[pick], fits.nll[pick], False
        status[rows] = _statuses(fits.status[pick])
        # from the winning draw itself: a fit from the draw's optimum may start on a bound
        # (Boehm's: 1031 evaluations, from the draw 207)
        map_start[rows] = extra[pick - b]
        centre = fit(everyone, map_start, True)
        centre_z, centre_nll = centre.z, centre.nll
    else:
        centre_z, centre_nll = fits.z[n_ml:], fits.nll[n_ml:]
    z_map = np.where(np.isfinite(centre_nll)[:, None], centre_z, z_ml)
    lap = uncertainty.laplace(model, t, channel, value, z_map, fitted=True)
    if model.observation is None:
        gof = uncertainty.gof_pvalue(nll, lap.n_observations, lap.p_eff)
    else:  # its NLL has log sigma terms: the statistic from the residuals at z_ml
        gof = np.full(b, np.nan)
        ok = np.isfinite(z_ml).all(axis=1)
        if ok.any():
            gof[ok] = uncertainty.gof_pvalue_at(model, t[ok], channel[ok], value[ok], z_ml[ok], lap.p_eff[ok])
    return Refined(z=z_ml, nll=nll, kept=kept, refine_status=status, laplace=lap, gof_pvalue=gof, method=fits.method)


def _statuses(codes: np.ndarray) -> np.ndarray:
    """SPEC 7's refine_status (object array) of fits that ended with these FitStatus codes."""
    return np.array([STATUS.get(FitStatus(int(c)), "failed") for c in codes], dtype=object)


def check_starts(starts) -> int:
    if isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or not 1 <= starts <= MAX_STARTS:
        raise ValueError(f"refine starts must be an integer from 1 to {MAX_STARTS}, got {starts!r}")
    return int(starts)


def posterior_starts(model, t, channel, value, z, n: int) -> np.ndarray:
    """(B, n, P) further starts for the refinement of z (B, P): draws of N(z, cov), the
    Laplace approximation's covariance at the network's estimate
    (:func:`mechinfer.estimate.uncertainty.laplace`), inside the z box. Along what the
    observations determine they stay near the estimate; along what they do not, they
    spread as the prior does, which is where a fit from the estimate alone cannot look
    (a likelihood flat there locally may still rise far off: Boehm_JProteomeRes2014's
    published optimum has two rates near their bounds). The standard normal draws are
    the same for every row (seed :data:`STARTS_SEED`), so a row's answer depends on that
    row alone: served, in bulk or in process alike. A row whose approximation is not
    finite gets its own z again (a fit that repeats its first)."""
    b, p = z.shape
    if n == 0 or b == 0:
        return np.zeros((b, n, p))
    cov = uncertainty.laplace(model, t, channel, value, z).cov_z
    eps = np.random.default_rng(STARTS_SEED).standard_normal((n, p))
    out = np.repeat(z[:, None, :], n, axis=1)
    for i in range(b):
        try:
            root = np.linalg.cholesky(0.5 * (cov[i] + cov[i].T))
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(root).all():
            out[i] += eps @ root.T
    return np.clip(out, -Z_BOX, Z_BOX)


def _draws_that_win(fits, b: int, n: int, nll: np.ndarray) -> np.ndarray:
    """(B,) for each row the index of the draw whose maximum-likelihood fit (``fits``
    from index B on, n a row) reached a lower NLL than the fit from z (``nll``), the
    lowest of them; -1 where none did."""
    draws = slice(b, b + b * n)
    more = fits.nll[draws].reshape(b, n)
    finite = np.isfinite(more) & np.isfinite(fits.z[draws]).all(axis=1).reshape(b, n)
    more = np.where(finite, more, np.inf)
    best = np.argmin(more, axis=1)
    lower = more[np.arange(b), best] < np.where(np.isfinite(nll), nll, np.inf)
    return np.where(lower, best, -1)


def _plateaus(model, t, channel, value, z, fits) -> np.ndarray:
    """Rows (indices) whose maximum-likelihood fit from z (the first B of ``fits``) took no
    step from z and whose residuals there fail the goodness-of-fit test at
    :data:`PLATEAU_PVALUE` with no parameter counted (see there)."""
    b = len(z)
    stopped = np.isin(fits.status[:b], [FitStatus.CONVERGED, FitStatus.LINE_SEARCH])  # on its own, not cut off
    still = np.where((fits.iterations[:b] == 0) & stopped & np.isfinite(fits.nll[:b]))[0]
    if not len(still):
        return still
    p = uncertainty.gof_pvalue_at(model, t[still], channel[still], value[still], z[still], np.zeros(len(still)))
    return still[p < PLATEAU_PVALUE]


def _where(keep, a, b):
    """a where ``keep`` (per row), else b; over any trailing axes."""
    keep = np.asarray(keep, bool)
    a, b = np.asarray(a), np.asarray(b)
    return np.where(keep.reshape(keep.shape + (1,) * (max(a.ndim, b.ndim) - keep.ndim)), a, b)


def combine(network: Mapping, refined: Mapping) -> dict:
    """The network's row(s) with their refinement's (:meth:`Refined.rows`): a row whose fit
    moved takes the fit's :data:`FIELDS`; a row that ``kept`` its start (a failed fit, or a
    deadline before the first step) keeps the network's answer. ``refine_status`` is the
    refinement's; ``refined`` (bool) says whose answer the row holds, and so which
    recalibration table its intervals take."""
    kept = np.asarray(refined["kept"], bool)
    out = dict(network)
    for name in FIELDS:
        if name in network:
            out[name] = _where(kept, network[name], refined[name])
    out["refine_status"] = refined["refine_status"]
    out["refined"] = ~kept
    return out


# A parameter counts as determined by the observations when its posterior variance in z
# is at most this share of the prior's (1: z is N(0, 1) under the prior), i.e. the
# observations hold at least 3x the prior's information on it (sd 0.5 against 1).
DETERMINED_VARIANCE = 0.25


def determined(cov_z: np.ndarray) -> np.ndarray:
    """(..., P) bool from covariances (..., P, P) in z: which parameters the observations
    determine (:data:`DETERMINED_VARIANCE`). An undetermined parameter's estimate is
    wherever the flat likelihood left it (up to the z box's edge after a refinement) and
    its interval is about the prior's: neither is a measurement of it."""
    return np.diagonal(np.asarray(cov_z), axis1=-2, axis2=-1) <= DETERMINED_VARIANCE
