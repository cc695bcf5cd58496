"""``load_estimator`` and the estimator it returns (SPEC 8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ..config import AUTO_PVALUE
from ..fit import mle
from ..fit.bfgs import FitStatus
from ..learn import checkpoint
from ..models import list_models, priors
from ..models.sources import model_from_record
from . import recalibration, uncertainty
from .uncertainty import Laplace

REFINE_STATUS = {  # SPEC 7's refine_status of a fit that ended so
    FitStatus.CONVERGED: "converged",
    FitStatus.LINE_SEARCH: "converged",  # no step lowers the NLL further: a minimum to the solver's accuracy
    FitStatus.MAX_ITER: "iteration_limit",
    FitStatus.DEADLINE: "deadline",
    FitStatus.BAD_START: "failed",
}


@dataclass
class Inference:
    """What :meth:`Estimator.infer` returns for B observation sets (SPEC 8, 9)."""

    theta: np.ndarray  # (B, P) physical units: the network's or the refined estimate
    z: np.ndarray  # (B, P) the same in z space
    lower: np.ndarray  # (B, P) physical units, at ``level``
    upper: np.ndarray  # (B, P)
    center: np.ndarray  # (B, P) the z the intervals are centred on (the maximum a posteriori point)
    cov_z: np.ndarray  # (B, P, P) covariance in z the intervals come from
    nll: np.ndarray  # (B,) at the estimate (NaN where the model cannot be solved there)
    gof_pvalue: np.ndarray  # (B,) NaN where undefined (SPEC 9)
    p_eff: np.ndarray  # (B,) parameters the observations determine (gof's degrees of freedom)
    n_observations: np.ndarray  # (B,)
    refine_status: np.ndarray  # (B,) str: not_requested, skipped, converged, iteration_limit, deadline, failed
    level: float
    scale: Callable[[float, np.ndarray], np.ndarray] | None = None  # the recalibration (None: normal quantile)

    def intervals(self, model, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) (B, P) at another ``level``, from the same approximation."""
        return uncertainty.intervals(model, self.center, self.cov_z, level, self.scale)


@dataclass
class Refined:
    """Refined estimates with the Laplace approximation for their intervals."""

    z: np.ndarray  # (B, P) the maximum-likelihood fit, or the start where ``kept``
    nll: np.ndarray  # (B,) at z
    kept: np.ndarray  # (B,) bool: the fit failed (or its deadline came before its first step): z is the start
    refine_status: list[str]
    laplace: Laplace  # at the maximum a posteriori point (its centre and covariance)
    gof_pvalue: np.ndarray  # (B,) of the fit's NLL against laplace.p_eff


def refine_mode(refine) -> str:
    """False / True / "auto" as "never" / "always" / "auto" (the bulk job's names are
    accepted too)."""
    if refine is False or refine is None or refine == "never":
        return "never"
    if refine is True or refine == "always":
        return "always"
    if refine == "auto":
        return "auto"
    raise ValueError(f"refine must be False, True or 'auto', got {refine!r}")


class Estimator:
    """Maps observation sets to parameter estimates with a trained Deep Set network."""

    def __init__(self, net: torch.nn.Module, meta: dict, recalibrated: recalibration.Recalibration | None = None):
        self.net = net
        self.meta = meta
        # the checkpoint's stored copy of its model (SPEC 11): no access to the user's file
        self.model = model_from_record(meta)
        self.checkpoint_id = meta["checkpoint_id"]
        self.recalibration = recalibrated

    def interval_scale(self, refined) -> Callable[[float, np.ndarray], np.ndarray] | None:
        """(level, sd (B, P)) -> (B, P) multipliers of the sd for rows that were
        (``refined`` (B,) True) or were not refined, from the checkpoint's
        recalibration; None (the normal quantile) for a checkpoint without one."""
        rec = self.recalibration
        if rec is None:
            return None
        refined = np.asarray(refined, bool).copy()
        return lambda level, sd: rec.scale(level, sd, refined)

    @torch.no_grad()
    def estimate_z(self, t, channel, value) -> np.ndarray:
        t, channel, value = self._check(t, channel, value)
        return (
            self.net(
                torch.tensor(t, dtype=torch.float32), torch.tensor(channel), torch.tensor(value, dtype=torch.float32)
            )
            .double()
            .numpy()
        )

    def estimate(self, t, channel, value, refine: bool | str = False) -> np.ndarray:
        """t, value (B, N) float; channel (B, N) int index into model.channels; rows with
        fewer observations padded with NaN values -> theta (B, P), physical units.

        ``refine=True`` polishes each estimate by one BFGS start from it (the paper's
        Deep Inference + BFGS): the maximum-likelihood fit near the network's answer.
        ``"auto"``: only where the network's estimate fails the goodness-of-fit check
        (see :meth:`infer`)."""
        if refine_mode(refine) == "auto":
            return self.infer(t, channel, value, refine="auto").theta
        z = self.estimate_z(t, channel, value)
        if refine_mode(refine) == "always":
            z = self.refine(t, channel, value, z).z
        return priors.from_z(self.model.priors, torch.from_numpy(z)).numpy()

    def infer(
        self,
        t,
        channel,
        value,
        refine: bool | str = False,
        level: float = 0.95,
        *,
        auto_pvalue: float = AUTO_PVALUE,
        deadline=None,
        **fit_options,
    ) -> Inference:
        """Estimates with intervals at ``level``, their covariance in z, the NLL and the
        goodness of fit (SPEC 9; the method is in :mod:`mechinfer.estimate.uncertainty`).
        ``refine``: False, True, or "auto" (refine the cases whose network estimate has
        ``gof_pvalue < auto_pvalue`` or none). ``deadline`` and ``fit_options`` go to
        the refinement (see :meth:`refine`)."""
        mode = refine_mode(refine)
        level = uncertainty.check_level(level)
        t, channel, value = self._check(t, channel, value)
        z = self.estimate_z(t, channel, value)
        lap = uncertainty.laplace(self.model, t, channel, value, z)
        nll, gof, status = lap.nll.copy(), lap.gof_pvalue.copy(), np.full(len(z), "not_requested", dtype=object)
        refined = np.zeros(len(z), bool)  # rows whose intervals come from the refinement's approximation
        if mode != "never":
            todo = np.ones(len(z), bool) if mode == "always" else ~(gof >= auto_pvalue)
            status[~todo] = "skipped"
            finite = np.isfinite(z).all(axis=1)
            status[todo & ~finite] = "failed"  # no fit starts from a non-finite estimate
            todo &= finite
            if todo.any():
                r = self.polish(t[todo], channel[todo], value[todo], z[todo], deadline=deadline, **fit_options)
                status[todo] = r.refine_status
                z[todo], nll[todo], gof[todo] = r.z, r.nll, r.gof_pvalue
                for name in ("center", "cov_z", "p_eff"):
                    getattr(lap, name)[todo] = getattr(r.laplace, name)
                refined = todo
        lap.scale = self.interval_scale(refined)
        lower, upper = lap.intervals(self.model, level)
        return Inference(
            theta=self.model.from_z(z),
            z=z,
            lower=lower,
            upper=upper,
            center=lap.center,
            cov_z=lap.cov_z,
            nll=nll,
            gof_pvalue=gof,
            p_eff=lap.p_eff,
            n_observations=lap.n_observations,
            refine_status=status,
            level=level,
            scale=lap.scale,
        )

    def polish(self, t, channel, value, z, deadline=None, **fit_options) -> Refined:
        """Refine z (B, P), the network's estimates, into maximum-likelihood fits, and find
        the maximum a posteriori points (the N(0, I) prior added) for the Laplace
        approximation that gives the intervals: centred there, the intervals are
        calibrated, where the same approximation at the maximum-likelihood fit covers
        the truth less often than its level (measured on the SPEC test set; see
        :mod:`mechinfer.estimate.uncertainty`). Both start from z, as one batched BFGS
        of 2B problems (neither waits for the other), each stopped at ``deadline``."""
        b = len(z)
        two = lambda a: np.concatenate([a, a])
        t, channel, value = self._check(t, channel, value)
        with_prior = np.repeat([False, True], b)
        if deadline is not None:  # one per case (or one for all): each case's two fits stop at it
            deadline = two(np.broadcast_to(np.asarray(deadline, dtype=np.float64), (b,)))
        fits = self.refine(two(t), two(channel), two(value), two(z), deadline=deadline, prior=with_prior, **fit_options)
        status = [REFINE_STATUS.get(FitStatus(int(s)), "failed") for s in fits.status[:b]]
        # kept: the fit failed, or its deadline stopped it before its first step (its point is the start)
        stopped = np.array([s == "deadline" for s in status]) & (fits.z[:b] == z).all(axis=1)
        kept = ~np.isfinite(fits.nll[:b]) | ~np.isfinite(fits.z[:b]).all(axis=1) | stopped
        status = ["failed" if k and s != "deadline" else s for s, k in zip(status, kept)]
        z_ml = np.where(kept[:, None], z, fits.z[:b])
        z_map = np.where(np.isfinite(fits.nll[b:])[:, None], fits.z[b:], z_ml)
        lap = uncertainty.laplace(self.model, t, channel, value, z_map)
        lap.scale = self.interval_scale(np.ones(b, bool))
        nll = np.where(kept, mle.nll(self.model, t, channel, value, z_ml), fits.nll[:b])
        return Refined(
            z=z_ml,
            nll=nll,
            kept=kept,
            refine_status=status,
            laplace=lap,
            gof_pvalue=uncertainty.gof_pvalue(nll, lap.n_observations, lap.p_eff),
        )

    def refine(self, t, channel, value, z, **fit_options) -> mle.Fit:
        """One BFGS start per observation set from z (B, P), the network's estimate. A row
        whose start cannot be simulated keeps z (status FitStatus.BAD_START). ``fit_options`` go to
        :func:`mechinfer.fit.mle.fit` (e.g. ``compile``)."""
        t, channel, value = self._check(t, channel, value)
        return mle.fit(self.model, t, channel, value, z, **fit_options)

    def _check(self, t, channel, value):
        m = self.model
        t = np.asarray(t, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        if t.ndim == 1:
            t, value, channel = t[None], value[None], np.asarray(channel)[None]
        channel = np.asarray(channel)
        if not (t.shape == value.shape == channel.shape) or t.ndim != 2:
            raise ValueError(
                f"t, channel and value must have the same (B, N) shape, got {t.shape}, {channel.shape}, {value.shape}"
            )
        present = np.isfinite(value)
        if (np.isfinite(t) != present).any():
            raise ValueError("an observation has a time but no finite value, or a value but no finite time")
        if not present.any(axis=1).all():
            raise ValueError(f"row {int(np.where(~present.any(axis=1))[0][0])} has no observations")
        if ((t < 0) | (t > m.T))[present].any():
            raise ValueError(f"observation times must lie in [0, {m.T:g}] h for {m.name}")
        ch = np.where(present, channel, 0)
        if not np.issubdtype(ch.dtype, np.integer) or ((ch < 0) | (ch >= len(m.channels))).any():
            raise ValueError(f"channel must be integer indices into {list(m.channels)}")
        return t, ch.astype(np.int64), value


def shipped_checkpoint(model: str) -> str:
    return str(resources.files("mechinfer") / "pretrained" / model)


def load_estimator(source: str) -> Estimator:
    """A checkpoint directory or URI, or a model name for the pretrained checkpoint
    shipped with the package."""
    if source in list_models():
        path = shipped_checkpoint(source)
        if not (resources.files("mechinfer") / "pretrained" / source / checkpoint.META).is_file():
            raise ValueError(f"no pretrained checkpoint for {source!r} is shipped with this build")
        source = path
    net, meta = checkpoint.load(source, kind="inference")
    n_parameters = model_from_record(meta).n_parameters
    return Estimator(net, meta, recalibration.load(source, meta["checkpoint_id"], n_parameters))
