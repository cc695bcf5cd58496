"""``load_estimator`` and the estimator it returns (SPEC 8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ..config import AUTO_PVALUE
from ..fit import mle
from ..learn import checkpoint
from ..models import likelihood, list_models, priors
from ..models.sources import model_from_record
from . import recalibration, uncertainty
from . import refine as stage
from .refine import Refined


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
    determined: (
        np.ndarray
    )  # (B, P) bool: the observations determine the parameter (see mechinfer.estimate.refine.determined)
    level: float
    scale: Callable[[float, np.ndarray], np.ndarray] | None = None  # the recalibration (None: normal quantile)

    def intervals(self, model, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) (B, P) at another ``level``, from the same approximation."""
        return uncertainty.intervals(model, self.center, self.cov_z, level, self.scale)


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

    def observed(self, t, channel, value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entry of a user's observation sets: t, channel, value (B, N) (or (N,)),
        checked (times inside [0, T], known channels, finite values, positive values on a
        log-scale channel), with the values mapped to the model's noise space
        (:func:`mechinfer.models.likelihood.to_noise_space`; the identity for the built-in
        models). Every public method below maps its input here, exactly once; the
        ``network_z`` and :mod:`mechinfer.estimate.uncertainty` functions take what it
        returns."""
        t, ch, value = self._check(t, channel, value)
        return t, ch, np.asarray(likelihood.to_noise_space(self.model, value, ch), dtype=np.float64)

    @torch.no_grad()
    def estimate_z(self, t, channel, value) -> np.ndarray:
        """The network's estimates in z (B, P) of observation sets (values in the model's units)."""
        return self.network_z(*self.observed(t, channel, value))

    @torch.no_grad()
    def network_z(self, t, channel, y) -> np.ndarray:
        """The network's estimates in z (B, P) of observation sets that :meth:`observed`
        returned (values in the noise space)."""
        return (
            self.net(torch.tensor(t, dtype=torch.float32), torch.tensor(channel), torch.tensor(y, dtype=torch.float32))
            .double()
            .numpy()
        )

    def estimate(self, t, channel, value, refine: bool | str = False, **fit_options) -> np.ndarray:
        """t, value (B, N) float; channel (B, N) int index into model.channels; rows with
        fewer observations padded with NaN values -> theta (B, P), physical units.

        ``refine=True`` polishes each estimate by one fit started from it (by default the
        trust region; the paper's Deep Inference + BFGS with ``method="bfgs"``): the
        maximum-likelihood fit near the network's answer; ``starts=k`` as in
        :meth:`infer`. ``"auto"``: only where the network's estimate fails the
        goodness-of-fit check (see :meth:`infer`)."""
        how = stage.mode(refine)
        if how == "auto":
            return self.infer(t, channel, value, refine="auto", **fit_options).theta
        starts = stage.check_starts(fit_options.pop("starts", stage.REFINE_STARTS))
        t, channel, y = self.observed(t, channel, value)
        z = self.network_z(t, channel, y)
        if how == "always" and starts == 1:
            z = self._refine(t, channel, y, z, **fit_options).z
        elif how == "always":  # the refine stage's point, as infer answers it
            z = self._polish(t, channel, y, z, starts=starts, **fit_options).z
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
        ``gof_pvalue < auto_pvalue`` or none). ``deadline`` and ``fit_options`` (e.g.
        ``method="bfgs"``, or ``starts=4``: the refinement also from 3 draws of the
        estimate's Laplace approximation, the lowest NLL answered) go to the refinement
        (see :mod:`mechinfer.estimate.refine`)."""
        level = uncertainty.check_level(level)
        t, channel, y = self.observed(t, channel, value)
        z = self.network_z(t, channel, y)
        lap = uncertainty.laplace(self.model, t, channel, y, z)
        rows = {"z": z, "nll": lap.nll, "gof_pvalue": lap.gof_pvalue, "center": lap.center, "cov_z": lap.cov_z}
        rows["p_eff"], rows["refined"] = lap.p_eff, np.zeros(len(z), bool)
        todo, rows["refine_status"] = stage.select(refine, z, lap.gof_pvalue, auto_pvalue)
        if todo.any():
            r = self._polish(t[todo], channel[todo], y[todo], z[todo], deadline=deadline, **fit_options)
            done = stage.combine({k: v[todo] for k, v in rows.items()}, r.rows())
            for name, values in done.items():
                rows[name][todo] = values
        scale = self.interval_scale(rows["refined"])
        lower, upper = uncertainty.intervals(self.model, rows["center"], rows["cov_z"], level, scale)
        return Inference(
            theta=self.model.from_z(rows["z"]),
            z=rows["z"],
            lower=lower,
            upper=upper,
            center=rows["center"],
            cov_z=rows["cov_z"],
            nll=rows["nll"],
            gof_pvalue=rows["gof_pvalue"],
            p_eff=rows["p_eff"],
            n_observations=lap.n_observations,
            refine_status=rows["refine_status"],
            determined=stage.determined(rows["cov_z"]),
            level=level,
            scale=scale,
        )

    def polish(self, t, channel, value, z, deadline=None, **fit_options) -> Refined:
        """The refinement of z (B, P), the network's estimates, with the approximation for
        the intervals (:func:`mechinfer.estimate.refine.polish`)."""
        t, channel, y = self.observed(t, channel, value)
        return self._polish(t, channel, y, z, deadline=deadline, **fit_options)

    def _polish(self, t, channel, y, z, deadline=None, **fit_options) -> Refined:
        r = stage.polish(self.model, t, channel, y, z, deadline=deadline, **fit_options)
        r.laplace.scale = self.interval_scale(np.ones(len(z), bool))
        return r

    def refine(self, t, channel, value, z, method: str = stage.METHOD, **fit_options) -> mle.Fit:
        """One fit per observation set from z (B, P), the network's estimate, by ``method``
        (trust-region or bfgs). A row whose start cannot be simulated keeps z (status
        FitStatus.BAD_START). ``fit_options`` go to :func:`mechinfer.fit.mle.fit`."""
        t, channel, y = self.observed(t, channel, value)
        return self._refine(t, channel, y, z, method=method, **fit_options)

    def _refine(self, t, channel, y, z, method: str = stage.METHOD, **fit_options) -> mle.Fit:
        return mle.fit(self.model, t, channel, y, z, method=stage.check_method(method), **fit_options)

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
        ch = ch.astype(np.int64)
        if m.observation is not None:
            message = log_scale_problem(m, ch, value, present)
            if message is not None:
                raise ValueError(message)
        return t, ch, value


def log_scale(model, channel: int) -> str | None:
    """The scale ("log" or "log10") of a channel whose observable is on a log scale (its
    values must be positive: the noise space holds their logarithms), else None."""
    obs = model.observation
    if obs is None or obs.transformation[channel] == 0:
        return None
    return obs.observables[obs.channel_observable[channel]].transformation


def not_positive(name: str, value: float, scale: str) -> str:
    return (
        f"value {value:g} of channel {name!r} is not positive; its observable is on a {scale} scale, so it must be > 0"
    )


def log_scale_problem(model, channel: np.ndarray, value: np.ndarray, present: np.ndarray) -> str | None:
    """A message naming the first observation (B, N arrays) whose value is not positive
    on a channel whose observable is on a log scale, else None."""
    obs = model.observation
    if obs is None:
        return None
    with np.errstate(invalid="ignore"):
        bad = present & (obs.transformation[channel] != 0) & ~(value > 0)
    if not bad.any():
        return None
    i, j = (int(k[0]) for k in np.nonzero(bad))
    c = int(channel[i, j])
    return f"row {i}: " + not_positive(model.channels[c], float(value[i, j]), log_scale(model, c) or "log")


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
