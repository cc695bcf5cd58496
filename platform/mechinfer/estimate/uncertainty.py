"""Intervals and goodness of fit for an estimate (SPEC 9), from a Laplace approximation
in z space.

Why this approximation: in z the prior is N(0, I), so the posterior's curvature at an
estimate is J^T J + I, with J the Jacobian of the sigma-scaled residuals (the same
forward sensitivities that give BFGS its Gauss-Newton start; one solve with P
sensitivity columns). Its inverse is the covariance. A direction the observations
determine gets the data's curvature. A direction they do not determine keeps the
prior's unit variance, so its interval is the prior's width, never infinite or NaN.

The interval is centred on the maximum a posteriori point that one Gauss-Newton step
from the estimate reaches, z - (J^T J + I)^-1 (J^T r + z), not on the estimate itself.
Along a determined direction the two coincide. Along an undetermined one the
likelihood is flat, the maximum-likelihood estimate lies anywhere, and only the
posterior's centre makes a prior-width interval cover the truth at its level.

Where the estimate is itself a fitted maximum a posteriori point (a refinement's:
``laplace(..., fitted=True)``) the step should be negligible and harmless. With
sensitivities as large as Fujita's (see :data:`MISFIT_MAX`) the quadratic model can be
wrong even there: of 37 refined Fujita test fits centred by the step, it raised
NLL + |z|^2 / 2 by more than 1e-3 on 15 and by more than 10 on 6 (up to 1e14), which
centred their intervals on points the observations exclude. So a fitted point keeps
its step only where NLL + |z|^2 / 2 does not rise by more than :data:`CENTRE_ATOL`;
elsewhere the centre is the point itself, at the cost of one plain solve a row. Of 64
refined test fits that moves 3 on Boehm (one step had raised it by 41) and 7 on Bruno
(by at most 0.08); of 1024 SPEC test fits, 3 on E. coli (by at most 0.045) and none
on mmk. In z the change is small (Fujita's 15: distance to the truth 0.991 -> 0.981
RMS; its plain rows' 95% coverage before recalibration 0.890 -> 0.888): it keeps the
centre a point the fit supports. The network's own estimates keep their step whatever
it does to NLL + |z|^2 / 2: from them it moves towards the truth even where it raises
that sum (mmk, 1024 SPEC test estimates: it raises it on 485, yet the truth's 95%
coverage is 0.917 with the step and 0.899 with such steps undone).

The effective number of parameters the data determine is
p_eff = trace(J^T J (J^T J + I)^-1) = P - trace(cov_z) (each direction counts
lambda / (1 + lambda), with lambda its data curvature). ``gof_pvalue`` compares 2 NLL,
a sum of squared sigma-scaled residuals, with a chi-square of n_obs - p_eff degrees of
freedom. It is undefined (NaN) when fewer than one degree of freedom is left (one
observation always leaves less, as p_eff > 0 for the direction it determines: the
determined parameters can match it exactly, so a misfit cannot be judged) or the solve
failed.

A model with an observation model of its own (a PEtab problem's: noise scales sigma_i
that may be estimated parameters, normal or Laplace noise, values in its noise space;
:mod:`mechinfer.models.observation`) takes the same approximation with the Fisher
information in place of J^T J: for normal noise of scale sigma(theta),
I = J_mu^T J_mu / sigma^2 + 2 J_logsigma^T J_logsigma; for Laplace noise of scale b
(its Fisher information is 1 / b^2 for the location and 1 for log b),
I = J_mu^T J_mu / b^2 + J_logb^T J_logb. The centre is one Fisher-scoring step from the
estimate on NLL + |z|^2 / 2 (the NLL with its log sigma terms), p_eff the same trace.
``gof_pvalue`` there compares sum r_i^2 over the normal observations plus 2 sum |r_i|
over the Laplace ones (2 |r| of a unit Laplace draw is a chi-square of 2 degrees of
freedom) with a chi-square of n_normal + 2 n_laplace - p_eff degrees of freedom. Where
the noise scale is itself estimated, a misfit raises the estimated sigma instead of the
statistic: the check then tests the residuals' consistency with the fitted noise, not
the model's fit (an estimated sigma counts in p_eff as the direction it determines).

A fit that does not explain its observations (the goodness-of-fit test rejects it at
:data:`MISFIT_PVALUE`) has residuals larger than its noise model says, and an information
computed as if they were noise would claim a precision the fit does not have. Its
information is divided by the misfit s^2 = statistic / (degrees of freedom left), the
noise variance the residuals show (as least squares does when the noise scale is not
known: Birge's ratio, scipy's ``curve_fit`` with ``absolute_sigma=False``). A moderate
misfit widens the intervals by s. Where s^2 > :data:`MISFIT_MAX` (residuals of more
than 10 noise scales on average: a fit in another basin, where wide priors put a
refinement's start far off) the information is dropped: the prior's covariance and
centre, so its parameters count as undetermined and its intervals are the prior's. Measured on
a Fujita_SciSignal2010 small run before this rule: about 5% of the determined
calibration cases were such fits, their Laplace sd tiny at a meaningless point, and the
recalibration multipliers that had to cover them reached 1e8 - 1e12. A fit that passes
the test is unchanged (``gof_pvalue`` and ``p_eff`` are always those of the unscaled
information).

The intervals map to physical units through the monotone per-parameter z map. Their
half-width is a multiple of the standard deviation in z: the normal quantile, or, for a
checkpoint that carries a recalibration (:mod:`mechinfer.estimate.recalibration`), the
multiplier measured on simulated experiments, which corrects the Gaussian tails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

from ..fit import mle
from ..models import likelihood
from ..models.base import Model
from ..solver import SolveStatus


@dataclass
class Laplace:
    """The Laplace approximation at estimates z (B, P)."""

    center: np.ndarray  # (B, P) interval centre in z: one Gauss-Newton step to the MAP point
    cov_z: np.ndarray  # (B, P, P) covariance in z; the identity (the prior) where the solve failed
    nll: np.ndarray  # (B,) at the estimate; NaN where the solve failed
    n_observations: np.ndarray  # (B,)
    p_eff: np.ndarray  # (B,) parameters the observations determine (see the module docstring)
    gof_pvalue: np.ndarray  # (B,) NaN where undefined
    scale: Callable[[float, np.ndarray], np.ndarray] | None = None  # (level, sd) -> multipliers; None: normal

    def intervals(self, model: Model, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (B, P) in physical units, at confidence ``level``."""
        return intervals(model, self.center, self.cov_z, level, self.scale)


def check_level(level: float) -> float:
    level = float(level)
    if not 0.5 <= level <= 0.999:
        raise ValueError(f"level must lie in [0.5, 0.999], got {level:g}")
    return level


def intervals(
    model: Model, center: np.ndarray, cov_z: np.ndarray, level: float, scale: Callable | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Central intervals at ``level``, centre +- q sd in z mapped to physical units; q is
    the normal quantile, or ``scale(level, sd)`` ((B, P) multipliers, a recalibration)."""
    level = check_level(level)
    sd = np.sqrt(np.clip(np.diagonal(cov_z, axis1=-2, axis2=-1), 0.0, None))
    q = special.ndtri(0.5 + 0.5 * level) if scale is None else scale(level, sd)
    return model.from_z(center - q * sd), model.from_z(center + q * sd)


def laplace(model: Model, t, channel, value, z, *, fitted: bool = False, **solver_options) -> Laplace:
    """The Laplace approximation at z (B, P) for NaN-padded (B, N) observation sets
    (values in the model's noise space), solved at the fit tolerance
    (:func:`mechinfer.fit.mle.fit_tolerances`) unless ``solver_options`` say otherwise.
    ``fitted``: z are fitted maximum a posteriori points, whose centre step is kept only
    where it does not raise NLL + |z|^2 / 2 (see the module docstring)."""
    if model.observation is not None:
        lap, plain = _laplace_observed(model, t, channel, value, z, **solver_options)
    else:
        lap, plain = _laplace_plain(model, t, channel, value, z, **solver_options)
    if fitted:
        points = np.asarray(z, dtype=np.float64)
        _keep_fitted_centres(model, t, channel, value, points, lap.nll, lap.center, plain, solver_options)
    return lap


# A fitted point's centre step may raise NLL + |z|^2 / 2 by at most this (NLL units): ten
# times the trust region's absolute tolerance (mle.NLL_ATOL), above the solver's noise
CENTRE_ATOL = 1e-3


def _keep_fitted_centres(
    model, t, channel, value, z: np.ndarray, nll: np.ndarray, center: np.ndarray, plain, solver_options
) -> None:
    """Set ``center`` (in place) back to the fitted point z on the ``plain`` rows (centred
    by the plain step, not by :func:`_widen_misfits`) where the step raised
    NLL + |z|^2 / 2 by more than CENTRE_ATOL, or left it not finite. ``nll``: the
    approximation's own NLL at z (the solve that gave it), so only the centres are solved."""
    rows = np.where(plain & (center != z).any(axis=1))[0]
    if not len(rows):
        return
    t, channel, value = (np.asarray(a)[rows] for a in (t, channel, value))
    at_centre = mle.nll(model, t, channel, value, center[rows], **solver_options)
    at_centre = at_centre + 0.5 * np.square(center[rows]).sum(axis=1)
    at_z = nll[rows] + 0.5 * np.square(z[rows]).sum(axis=1)
    worse = ~(at_centre <= at_z + CENTRE_ATOL)
    center[rows[worse]] = z[rows[worse]]


def _laplace_plain(model: Model, t, channel, value, z, **solver_options) -> tuple[Laplace, np.ndarray]:
    """:func:`laplace` for a built-in model, and which rows the plain step centres."""
    t, channel, value = mle._tensors(t, channel, value)
    z = torch.as_tensor(np.asarray(z, dtype=np.float64))
    finite = torch.isfinite(z).all(-1)  # a non-finite estimate (an overflowing network input) has no solve
    n, p = z.shape
    r, jac = torch.zeros_like(value), torch.zeros(n, value.shape[1], p, dtype=z.dtype)
    ok = torch.zeros(n, dtype=torch.bool)
    if finite.any():
        rows = torch.where(finite)[0]
        r[rows], jac[rows], ok[rows] = mle.residual_jacobian(
            model, z[rows], t[rows], channel[rows], value[rows], **mle._fit_options(solver_options, model)
        )
    gradient = (jac.transpose(1, 2) @ r[..., None])[..., 0] + z  # of NLL + |z|^2 / 2
    center, cov, p_eff = _newton_step(z, jac, gradient, ok)
    n_obs = np.isfinite(value.numpy()).sum(axis=1)
    nll = np.where(ok.numpy(), 0.5 * r.square().sum(-1).numpy(), np.nan)
    gof = gof_pvalue(nll, n_obs, p_eff)
    widened = _widen_misfits(z, jac, gradient, ok, center, cov, 2.0 * nll, n_obs, p_eff, gof)
    lap = Laplace(center=center, cov_z=cov, nll=nll, n_observations=n_obs, p_eff=p_eff, gof_pvalue=gof)
    return lap, ~widened


def _newton_step(z: torch.Tensor, root: torch.Tensor, gradient: torch.Tensor, ok: torch.Tensor):
    """The approximation's centre, one Newton step on NLL + |z|^2 / 2 from z with the
    (Gauss-Newton or Fisher) information root^T root (``root`` (B, M, P): its square root,
    the stacked Jacobians) and the gradient (B, P), its covariance (root^T root + I)^-1
    (:func:`mechinfer.fit.mle.information_inverse`; the prior's, I, where ``root`` is
    zero: rows not ``ok``) and p_eff = P - trace(cov), the parameters the observations
    determine; numpy."""
    cov = mle.information_inverse(root)
    center = torch.where(ok[:, None], z - (cov @ gradient[..., None])[..., 0], z)
    return center.numpy(), cov.numpy(), z.shape[1] - np.trace(cov.numpy(), axis1=1, axis2=2)


def gof_pvalue(nll: np.ndarray, n_observations: np.ndarray, p_eff: np.ndarray) -> np.ndarray:
    """P(chi2(n_observations - p_eff) >= 2 NLL); NaN where fewer than one degree of
    freedom is left or the NLL is not finite."""
    return chi2_pvalue(2.0 * np.asarray(nll, dtype=np.float64), n_observations, p_eff)


def _laplace_observed(model: Model, t, channel, value, z, **solver_options) -> tuple[Laplace, np.ndarray]:
    """:func:`laplace` for a model with an observation model of its own (see the module),
    and which rows the plain step centres."""
    obs = model.observation
    assert obs is not None
    t, channel, value = mle._tensors(t, channel, value)
    z = torch.as_tensor(np.asarray(z, dtype=np.float64))
    n, p = z.shape
    m = value.shape[1]
    r, log_sigma = torch.zeros_like(value), torch.zeros_like(value)
    d_mu, d_log_sigma = torch.zeros(n, m, p, dtype=z.dtype), torch.zeros(n, m, p, dtype=z.dtype)
    ok = torch.zeros(n, dtype=torch.bool)
    rows = torch.where(torch.isfinite(z).all(-1))[0]  # a non-finite estimate has no solve
    if len(rows):
        r[rows], log_sigma[rows], d_mu[rows], d_log_sigma[rows], ok[rows] = mle.standardised(
            model, z[rows], t[rows], channel[rows], value[rows], **mle._fit_options(solver_options, model)
        )
    mask = torch.isfinite(t) & torch.isfinite(value)
    laplace_noise = torch.as_tensor(obs.laplace)[channel] & mask
    # Fisher information per observation: 1 / sigma^2 for the location (both laws), 2 (normal)
    # or 1 (Laplace) for log sigma
    w_scale = torch.where(laplace_noise, 1.0, 2.0).to(z.dtype)
    root = torch.cat([d_mu, d_log_sigma * w_scale.sqrt()[..., None]], 1)  # info = root^T root
    d_r = torch.where(laplace_noise, torch.sign(r), r)  # -dNLL/dmu * sigma
    d_s = torch.where(laplace_noise, 1.0 - r.abs(), 1.0 - r.square())  # dNLL/dlog sigma
    gradient = (-(d_mu * d_r[..., None]) + d_log_sigma * torch.where(mask, d_s, 0.0)[..., None]).sum(1) + z
    center, cov, p_eff = _newton_step(z, root, gradient, ok)  # root is zero where ok is False
    per = torch.where(laplace_noise, r.abs(), 0.5 * r.square()) + log_sigma
    nll = np.where(ok.numpy(), torch.where(mask, per, 0.0).sum(-1).numpy(), np.nan)
    n_obs = mask.numpy().sum(axis=1)
    statistic, dof = _statistic(r, laplace_noise, mask)
    gof = chi2_pvalue(np.where(ok.numpy(), statistic, np.nan), dof, p_eff)
    widened = _widen_misfits(z, root, gradient, ok, center, cov, statistic, dof, p_eff, gof)
    lap = Laplace(center=center, cov_z=cov, nll=nll, n_observations=n_obs, p_eff=p_eff, gof_pvalue=gof)
    return lap, ~widened


# The goodness-of-fit p-value below which a fit's information is divided by its misfit
# (see the module docstring): a fit that explains its observations keeps the plain
# approximation. Below it on the SPEC test set: of the refined fits 1 of 1024 (mmk) and
# 0 of 1024 (E. coli), of the network's estimates 2 and 29 of 1024; with the shipped
# recalibration tables every parameter's 95% coverage there moves by at most 0.003.
MISFIT_PVALUE = 1e-3
# Above this misfit (residuals of 10 noise scales on average) a fit is in another basin
# than the observations' (a refinement from a start far off, on a wide prior) and its
# local curvature says nothing about them: with Fujita_SciSignal2010's sensitivities of
# 1e8 - 1e9 the information over s^2 = 1e16 still "determined" up to 10 parameters of
# fits with NLLs of 1e4 - 1e18. Such a fit gets the prior's covariance and centre.
MISFIT_MAX = 100.0


def misfit(statistic: np.ndarray, dof: np.ndarray, p_eff: np.ndarray, gof: np.ndarray) -> np.ndarray:
    """s^2 (B,): statistic / (dof - p_eff), the noise variance the residuals show, where
    the goodness-of-fit test rejects the fit (gof < MISFIT_PVALUE), else 1."""
    left = np.asarray(dof, dtype=np.float64) - p_eff
    rejected = np.asarray(gof) < MISFIT_PVALUE  # NaN (undefined): not rejected
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = np.asarray(statistic, dtype=np.float64) / left
    return np.where(rejected & (s2 > 1.0), s2, 1.0)


def _widen_misfits(z, root, gradient, ok, center, cov, statistic, dof, p_eff, gof) -> np.ndarray:
    """Recompute centre and covariance (in place) of the rows the goodness-of-fit test
    rejects, with the observations' information root^T root divided by their misfit s^2
    (:func:`misfit`), or dropped where s^2 > MISFIT_MAX (the prior's covariance and
    centre); the others are left as they are. Returns which rows it recomputed (B,)."""
    s2 = misfit(statistic, dof, p_eff, gof)
    rows = np.where(s2 > 1.0)[0]
    if not len(rows):
        return s2 > 1.0
    idx = torch.from_numpy(rows)
    weight = torch.from_numpy(np.where(s2[rows] > MISFIT_MAX, 0.0, 1.0 / s2[rows])).to(root.dtype)
    zr = z[idx]
    scaled_gradient = (gradient[idx] - zr) * weight[:, None] + zr  # the data's part weighted, the prior's as it is
    c, v, _ = _newton_step(zr, root[idx] * weight.sqrt()[:, None, None], scaled_gradient, ok[idx])
    center[rows], cov[rows] = c, v
    return s2 > 1.0


def _statistic(r: torch.Tensor, laplace_noise: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The goodness-of-fit statistic sum r^2 (normal) + 2 sum |r| (Laplace) per set and
    its degrees of freedom before the fit, n_normal + 2 n_laplace."""
    per = torch.where(laplace_noise, 2.0 * r.abs(), r.square())
    statistic = torch.where(mask, per, 0.0).sum(-1).numpy()
    dof = (torch.where(laplace_noise, 2, 1) * mask).sum(-1).numpy().astype(np.float64)
    return statistic, dof


def chi2_pvalue(statistic: np.ndarray, dof: np.ndarray, p_eff: np.ndarray) -> np.ndarray:
    """P(chi2(dof - p_eff) >= statistic); NaN where fewer than one degree of freedom is
    left or the statistic is not finite."""
    left = np.asarray(dof, dtype=np.float64) - p_eff
    ok = (left >= 1) & np.isfinite(statistic)
    out = np.full(np.shape(statistic), np.nan)
    out[ok] = stats.chi2.sf(np.asarray(statistic)[ok], left[ok])
    return out


def gof_pvalue_at(model: Model, t, channel, value, z, p_eff: np.ndarray, **solver_options) -> np.ndarray:
    """``gof_pvalue`` of estimates z (B, P) given their p_eff, from one plain solve (values
    in the noise space): for a model with an observation model of its own, whose NLL is
    no sum of squares (its log sigma terms), so a fit's NLL alone does not give it."""
    t, channel, value = mle._tensors(t, channel, value)
    z = torch.as_tensor(np.asarray(z, dtype=np.float64))
    mask = torch.isfinite(t) & torch.isfinite(value)
    with torch.no_grad():
        mu, sigma, status = likelihood.predict_with_noise(
            model, model.from_z(z), t, channel, **mle._fit_options(solver_options, model)
        )
    r = torch.where(mask, (value - mu) / torch.where(mask, sigma, 1.0), 0.0)
    laplace_noise = (
        torch.as_tensor(model.observation.laplace)[channel] & mask
        if model.observation is not None
        else torch.zeros_like(mask)
    )
    statistic, dof = _statistic(r, laplace_noise, mask)
    statistic = np.where((status == SolveStatus.OK).numpy(), statistic, np.nan)
    return chi2_pvalue(statistic, dof, p_eff)
