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

The effective number of parameters the data determine is
p_eff = trace(J^T J (J^T J + I)^-1) = P - trace(cov_z) (each direction counts
lambda / (1 + lambda), with lambda its data curvature). ``gof_pvalue`` compares 2 NLL,
a sum of squared sigma-scaled residuals, with a chi-square of n_obs - p_eff degrees of
freedom. It is undefined (NaN) when fewer than one degree of freedom is left (one
observation always leaves less, as p_eff > 0 for the direction it determines: the
determined parameters can match it exactly, so a misfit cannot be judged) or the solve
failed.

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
from ..models.base import Model


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


def laplace(model: Model, t, channel, value, z, **solver_options) -> Laplace:
    """The Laplace approximation at z (B, P) for NaN-padded (B, N) observation sets,
    solved at the fit tolerance (:data:`mechinfer.fit.mle.FIT_TOL`) unless
    ``solver_options`` say otherwise."""
    t, channel, value = mle._tensors(t, channel, value)
    z = torch.as_tensor(np.asarray(z, dtype=np.float64))
    finite = torch.isfinite(z).all(-1)  # a non-finite estimate (an overflowing network input) has no solve
    n, p = z.shape
    r, jac = torch.zeros_like(value), torch.zeros(n, value.shape[1], p, dtype=z.dtype)
    ok = torch.zeros(n, dtype=torch.bool)
    if finite.any():
        rows = torch.where(finite)[0]
        r[rows], jac[rows], ok[rows] = mle.residual_jacobian(
            model, z[rows], t[rows], channel[rows], value[rows], **mle._fit_options(solver_options)
        )
    eye = torch.eye(z.shape[1], dtype=z.dtype).expand(len(z), -1, -1)
    cov = torch.linalg.inv(jac.transpose(1, 2) @ jac + eye)  # the identity where ok is False (J = 0)
    gradient = (jac.transpose(1, 2) @ r[..., None])[..., 0] + z  # of NLL + |z|^2 / 2
    center = torch.where(ok[:, None], z - (cov @ gradient[..., None])[..., 0], z)
    n_obs = np.isfinite(value.numpy()).sum(axis=1)
    nll = np.where(ok.numpy(), 0.5 * r.square().sum(-1).numpy(), np.nan)
    p_eff = z.shape[1] - np.trace(cov.numpy(), axis1=1, axis2=2)
    return Laplace(
        center=center.numpy(),
        cov_z=cov.numpy(),
        nll=nll,
        n_observations=n_obs,
        p_eff=p_eff,
        gof_pvalue=gof_pvalue(nll, n_obs, p_eff),
    )


def gof_pvalue(nll: np.ndarray, n_observations: np.ndarray, p_eff: np.ndarray) -> np.ndarray:
    """P(chi2(n_observations - p_eff) >= 2 NLL); NaN where fewer than one degree of
    freedom is left or the NLL is not finite."""
    dof = np.asarray(n_observations, dtype=np.float64) - p_eff
    ok = (dof >= 1) & np.isfinite(nll)
    out = np.full(np.shape(nll), np.nan)
    out[ok] = stats.chi2.sf(2.0 * np.asarray(nll)[ok], dof[ok])
    return out
