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

The refinement itself is one start per row from the network's estimate with
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

from ..config import REFINE_METHOD
from ..fit import mle
from ..fit.bfgs import FitStatus
from . import uncertainty
from .uncertainty import Laplace

METHOD = REFINE_METHOD
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


def polish(model, t, channel, value, z, *, deadline=None, method: str = METHOD, **fit_options) -> Refined:
    """Refine z (B, P), the network's estimates, into maximum-likelihood fits, and find
    the maximum a posteriori points for the Laplace approximation that gives the
    intervals: centred there, the intervals are calibrated, where the same approximation
    at the maximum-likelihood fit covers the truth less often than its level (measured on
    the SPEC test set; see :mod:`mechinfer.estimate.uncertainty`). Both start from z, as
    one batched fit of 2B problems (neither waits for the other), each stopped at
    ``deadline`` (wall-clock ``time.time()``, one per row or one for all). A start on a
    plateau gets a second one (:data:`PLATEAU_PVALUE`)."""
    b = len(z)
    two = lambda a: np.concatenate([a, a])
    if deadline is not None:  # each row's two fits stop at its deadline
        deadline = two(np.broadcast_to(np.asarray(deadline, dtype=np.float64), (b,)))
    method = mle.method_for(model, check_method(method))
    fit = lambda rows, start: mle.fit(
        model,
        two(t[rows]),
        two(channel[rows]),
        two(value[rows]),
        two(start),
        deadline=None if deadline is None else deadline[np.r_[rows, rows + b]],
        prior=np.repeat([False, True], len(start)),
        method=method,
        **fit_options,
    )
    everyone = np.arange(b)
    fits = fit(everyone, z)
    flat = _plateaus(model, t, channel, value, z, fits)
    if len(flat):  # their second start: the prior's median
        again = fit(flat, np.zeros((len(flat), z.shape[1])))
        both = np.r_[flat, flat + b]
        better = np.isfinite(again.nll) & ~(fits.nll[both] <= again.nll)
        for name in ("z", "theta", "nll", "status"):
            getattr(fits, name)[both[better]] = getattr(again, name)[better]
    status = np.array([STATUS.get(FitStatus(int(s)), "failed") for s in fits.status[:b]], dtype=object)
    # kept: the fit failed, or its deadline stopped it before its first step (its point is the start)
    stopped = (status == "deadline") & (fits.z[:b] == z).all(axis=1)
    kept = ~np.isfinite(fits.nll[:b]) | ~np.isfinite(fits.z[:b]).all(axis=1) | stopped
    status[kept & (status != "deadline")] = "failed"
    z_ml = np.where(kept[:, None], z, fits.z[:b])
    z_map = np.where(np.isfinite(fits.nll[b:])[:, None], fits.z[b:], z_ml)
    lap = uncertainty.laplace(model, t, channel, value, z_map)
    nll = fits.nll[:b].copy()
    if kept.any():  # a kept row's NLL at its start: one plain solve, for those rows only
        nll[kept] = mle.nll(model, t[kept], channel[kept], value[kept], z_ml[kept])
    if model.observation is None:
        gof = uncertainty.gof_pvalue(nll, lap.n_observations, lap.p_eff)
    else:  # its NLL has log sigma terms: the statistic from the residuals at z_ml
        gof = np.full(b, np.nan)
        ok = np.isfinite(z_ml).all(axis=1)
        if ok.any():
            gof[ok] = uncertainty.gof_pvalue_at(model, t[ok], channel[ok], value[ok], z_ml[ok], lap.p_eff[ok])
    return Refined(z=z_ml, nll=nll, kept=kept, refine_status=status, laplace=lap, gof_pvalue=gof, method=fits.method)


def _plateaus(model, t, channel, value, z, fits) -> np.ndarray:
    """Rows (indices) whose maximum-likelihood fit (the first half of ``fits``) took no
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
