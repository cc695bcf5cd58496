"""Maximum-likelihood fits of observation sets in z space (SPEC 3, 4): the multi-start
baseline and the refinement of a network's estimate, by BFGS or by trust-region
Gauss-Newton.

The NLL's gradient is exact for the discrete solver (never finite differences): on the
CPU the native solver's discrete adjoint, and its forward sensitivities for the
Gauss-Newton start and the residuals' Jacobian; with the torch backend (a GPU),
reverse-mode autograd through the batched steps. Every observation set of a batch is its
own problem; they are solved together by :func:`mechinfer.fit.bfgs.bfgs` or
:func:`mechinfer.fit.trust_region.trust_region`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import scipy.special
import torch

from .. import solver as _solver
from ..config import BaselineConfig
from ..models import likelihood, priors
from ..models.base import Model
from ..models.simulate import term
from ..solver import SolveStatus, native
from . import observed as _observed
from . import trust_region as _tr_module
from .bfgs import bfgs
from .trust_region import trust_region

MAX_ITER = BaselineConfig.max_iter  # SPEC 6.5; refinement uses the same limit
MAX_BATCH = 2048
# The solver tolerance while fitting. 1e-4 instead of the simulator's 1e-6: on 128
# E. coli fits the optima's NLL (re-evaluated at 1e-6) differ by a median 5e-9 and at
# most 0.7 (either way), and NLL differences below ~0.1 do not matter for a fit,
# while the solves take 2.7x less time.
FIT_TOL = 1e-4
JACOBIAN_ROWS = 4096  # solves per pass when computing Gauss-Newton Jacobians (bounds memory)
METHODS = ("bfgs", "trust-region")
# The trust region's absolute tolerance on the NLL (its ``f_atol``): a refinement stops
# once the Gauss-Newton model predicts at most this much decrease within one prior
# standard deviation per parameter. 1e-4 is 10x below the 1e-3 the refinement bench
# counts as "worse than the best", and below the FIT_TOL solves' own noise in the NLL
# (optima re-evaluated at rtol 1e-6 differ by a median 5e-9 but up to 0.7, see FIT_TOL).
NLL_ATOL = 1e-4
# The trust region's first radius in z for a fit (its ``radius0``): one prior standard
# deviation in all. A refinement starts from the network's estimate, mostly within that
# of its optimum; the default sqrt(P) (4.5 for E. coli) had the first two steps rejected
# in most E. coli refinements.
FIRST_RADIUS = 1.0
# The trust region's stall stop for a model with an observation model of its own (a PEtab
# problem's; its ``stall_atol``): converged once its last STALL (20) accepted steps
# decreased the NLL by less than this in all. A fiftieth of SPEC 12's success tolerance
# (0.5 in log-likelihood). The built-in models keep the trust region's default (20
# NLL_ATOL, 2e-3): these problems' NLLs run into the hundreds and their fits crawl longer: from
# the prior's median on Schwen's measurements the trust region spent 260 of 300
# iterations gaining 0.14, ~0.01 per 20 steps. 0.05 stopped crawls that were leaving a
# plateau: on Boehm's first 64 SPEC test samples, from the small run's network, one fit
# stopped 268 above the true parameters' NLL and R2 fell to 0.9862; at 0.01 R2 is 0.9997
# for 10% more evaluations (Bruno +9%, Elowitz +19%, Schwen +52%; no R2 or real-data
# log-likelihood of the five problems got worse).
OBSERVATION_STALL = 0.01


@dataclass
class Fit:
    z: np.ndarray  # (B, P) estimate in z space
    theta: np.ndarray  # (B, P) physical units
    nll: np.ndarray  # (B,)  NaN where the start could not be evaluated
    iterations: np.ndarray  # (B,)
    evaluations: np.ndarray  # (B,)  NLL + gradient evaluations
    status: np.ndarray  # (B,)  FitStatus values
    seconds: np.ndarray  # (B,)  each problem's share of the wall-clock (see bfgs)
    wall_s: float  # wall-clock of the whole fit
    method: str = "bfgs"  # the optimizer that ran (see method_for: the trust region may fall back to BFGS)
    space: str = "z"  # where it moved: "z", "u" (BFGS from prior draws on a PEtab problem's model) or "z+u" (see fit)


# The solver tolerances while fitting a model with an observation model of its own (a
# PEtab problem's). FIT_TOL was chosen on the built-in models; these problems' states
# live on their own scales and their log-likelihoods are compared to 0.5 (SPEC 12's
# success) and to published values: at the nominal parameters, Fujita's NLL is off by
# 0.08 at rtol = atol = 1e-4 and by 1.1e-3 at these (Boehm's by 3e-4 and < 1e-8), at
# 1.3-2x the cost of an NLL + gradient at 1e-4 (0.05 vs 0.035 s for 32 Boehm sets,
# 0.29 vs 0.15 s for 32 Fujita ones, one thread); the problem's own rtol 1e-8 and atol
# 1e-10 cost 3.5-4x.
OBSERVATION_FIT_TOL = {"rtol": 1e-6, "atol": 1e-8}


def fit_tolerances(model: Model | None = None) -> dict:
    """The solver's rtol / atol for fits of ``model``: FIT_TOL, or OBSERVATION_FIT_TOL for
    a model with an observation model of its own."""
    if model is not None and model.observation is not None:
        return dict(OBSERVATION_FIT_TOL)
    return {"rtol": FIT_TOL, "atol": FIT_TOL}


def _fit_options(solver_options: dict, model: Model | None = None) -> dict:
    """Solver settings for fits: :func:`fit_tolerances` unless the caller sets rtol / atol."""
    return {**fit_tolerances(model), **solver_options}


def _compile_default() -> bool:
    return os.environ.get("MECHINFER_COMPILE", "1") != "0"


def _tensors(t, channel, value, device=None):
    """float64 t, value and long channel tensors on ``device`` (default the CPU); the
    channel of a padded entry (NaN t) is 0."""
    t, channel, value = (torch.as_tensor(np.array(a), device=device) for a in (t, channel, value))
    t, value = t.double(), value.double()
    channel = torch.where(torch.isfinite(t), channel.long(), torch.zeros_like(channel.long()))
    return t, channel, value


def objective(model: Model, t, channel, value, device=None, prior=False, **solver_options):
    """fun(z, rows) -> (NLL, dNLL/dz) for the observation sets ``rows`` (a long tensor of
    row indices into t, channel, value). NaN NLL (and a zero gradient) where the solver
    failed. With the native solver the gradient comes from its discrete adjoint (one
    forward and one backward pass per set, no autograd); with the torch steps, reverse
    mode through them. ``device``: where the observations live and the NLL is evaluated
    (a CUDA device runs the torch steps). ``prior`` (for all sets, or per set: a (B,) bool
    array): add the N(0, I) prior's |z|^2 / 2, so the minimum is the maximum a posteriori
    point rather than the maximum-likelihood one."""
    t, channel, value = _tensors(t, channel, value, device)
    with_prior = np.broadcast_to(np.asarray(prior, dtype=bool), (t.shape[0],)).copy()
    solve = None
    # a model with an observation model of its own (a PEtab problem's: noise scales per
    # observation, possibly estimated, Laplace, log scales) has no native NLL + gradient:
    # autograd through likelihood.nll below, which includes every term in theta
    if model.observation is None and t.device.type == "cpu" and uses_native_solver(**solver_options):
        solve = likelihood.nll_and_gradient(
            model, likelihood.SortedObservations.of(model, t, channel, value), **solver_options
        )
    if solve is not None:
        # numpy between the calls: at the batch of one online refinement, torch's
        # per-operation cost (~5 us each) would exceed the mmk solve itself
        def native_fun(z: torch.Tensor, rows: torch.Tensor):
            z_np, r = z.detach().cpu().numpy(), rows.cpu().numpy()
            theta, dtheta_dz = priors.from_z_and_derivative(model.priors, z_np)
            f, g, _ = solve(theta, r)
            g = g * dtheta_dz
            add = with_prior[r]
            if add.any():
                f = f + np.where(add, 0.5 * (z_np * z_np).sum(-1), 0.0)
                g = g + np.where(add[:, None], z_np, 0.0)
            return torch.from_numpy(f), torch.from_numpy(g)

        return native_fun
    add_prior = torch.from_numpy(with_prior).to(t.device)

    def fun(z: torch.Tensor, rows: torch.Tensor):
        rows = rows.to(t.device)
        z = z.detach().to(t.device).requires_grad_(True)
        with torch.enable_grad():
            f = likelihood.nll(model, model.from_z(z), t[rows], channel[rows], value[rows], **solver_options)
            (g,) = torch.autograd.grad(torch.nan_to_num(f, nan=0.0).sum(), z)
        f, z = f.detach(), z.detach()
        add = add_prior[rows]
        return f + torch.where(add, 0.5 * z.square().sum(-1), 0.0), g + torch.where(add[:, None], z, 0.0)

    return fun


def residual_jacobian(model: Model, z: torch.Tensor, t, channel, value, **solver_options):
    """r (B, N), the sigma-scaled residuals (x_i - mu_i) / sigma_i at z, J (B, N, P), their
    Jacobian in z at fixed sigma (padded entries 0 in both), and ok (B,): rows whose solve
    succeeded with a finite J (others get r = J = 0); see :func:`standardised`."""
    r, _, d_mu, _, ok = standardised(model, z, t, channel, value, **solver_options)
    return r, -d_mu, ok


def standardised(model: Model, z: torch.Tensor, t, channel, value, **solver_options):
    """(r, log_sigma, d_mu, d_log_sigma, ok) of NaN-padded observation sets at z (B, P):
    the standardised residuals r (B, N) = (x - mu) / sigma, log sigma (B, N), the
    Jacobians in z of mu / sigma at fixed sigma and of log sigma (B, N, P), and ok (B,):
    rows solved with finite numbers. Padded entries, and every entry of a row not ok, are 0.

    From the native solver's forward sensitivities where it applies (one solve per set,
    and condition, whatever N: :func:`likelihood.predict_jacobian`,
    :meth:`~mechinfer.models.observation.Observation.predict_jacobian`); otherwise by
    one backward pass through the torch steps over the sets repeated once per
    observation (copy i differentiates observation i, so compiled backward graphs run
    once rather than N times). log sigma depends on z only where the model estimates a
    noise scale (a PEtab problem's sd parameters); for a built-in model it is constant."""
    mask = likelihood.observed_mask(t, value)
    theta, dtheta_dz = priors.from_z_and_derivative(model.priors, z.detach())
    solved = None
    if model.observation is not None:
        solved = model.observation.predict_jacobian(model, theta, t, channel, **solver_options)
    else:
        found = likelihood.predict_jacobian(model, theta, t, channel, **solver_options)
        if found is not None:
            mu, d_mu, status = found
            sigma = torch.as_tensor(model.sigma, device=t.device)[channel]
            solved = mu, d_mu, sigma, torch.zeros_like(d_mu), status
    if solved is not None:
        mu, d_mu, sigma, d_log_sigma, status = solved
        d_mu, d_log_sigma = d_mu * dtheta_dz[:, None, :], d_log_sigma * dtheta_dz[:, None, :]
    else:
        mu, d_mu, sigma, d_log_sigma, status = _repeated_backward(model, z, t, channel, mask, **solver_options)
    sd = torch.where(mask, sigma, torch.ones_like(sigma))
    r = torch.where(mask, (value - mu) / sd, torch.zeros_like(mu))
    log_sigma = torch.log(sd)
    d_mu = d_mu / sd[..., None]
    entries = mask[..., None]
    finite = lambda a: torch.isfinite(torch.where(entries if a.ndim == 3 else mask, a, 0.0)).flatten(1).all(1)
    ok = (status == SolveStatus.OK) & finite(r) & finite(log_sigma) & finite(d_mu) & finite(d_log_sigma)
    keep = lambda a: torch.where((entries if a.ndim == 3 else mask) & ok.reshape(-1, *[1] * (a.ndim - 1)), a, 0.0)
    return keep(r), keep(log_sigma), keep(d_mu), keep(d_log_sigma), ok


def _repeated_backward(model: Model, z: torch.Tensor, t, channel, mask, **solver_options):
    """(mu, d mu / dz, sigma, d log sigma / dz, status) for :func:`standardised` by
    autograd: the sets repeated once per observation, copy i differentiating
    observation i."""
    b, n = t.shape
    if model.observation is not None:  # two backward passes (mu, log sigma): no compiled graph
        solver_options = {**solver_options, "compile": False}
    rep = torch.arange(b, device=t.device).repeat_interleave(n)
    zz = z.detach().repeat_interleave(n, dim=0).requires_grad_(True)
    with torch.enable_grad():
        mu_rep, sigma_rep, status = likelihood.predict_with_noise(
            model, model.from_z(zz), t[rep], channel[rep], **solver_options
        )
        pick = lambda a: a.reshape(b, n, n).diagonal(dim1=1, dim2=2)  # copy i, observation i
        mu, sigma = pick(mu_rep), pick(sigma_rep)
        outputs = (torch.where(mask, mu, 0.0), torch.where(mask, torch.log(torch.where(mask, sigma, 1.0)), 0.0))
        grads = []
        # the graph is kept for the second pass only where there is one: a compiled
        # backward graph (torch's steps with compile) refuses retain_graph
        retain = outputs[1].requires_grad
        for k, out in enumerate(outputs):
            if not out.requires_grad:  # constant noise: no dependence on z
                grads.append(torch.zeros_like(zz))
                continue
            (g,) = torch.autograd.grad(out.sum(), zz, retain_graph=retain and k == 0, allow_unused=True)
            grads.append(torch.zeros_like(zz) if g is None else g)
    status = status.reshape(b, n).amax(1)  # a row fails if any of its copies failed
    return mu.detach(), grads[0].reshape(b, n, -1), sigma.detach(), grads[1].reshape(b, n, -1), status


def observation_jacobians(model: Model, z: torch.Tensor, t, channel, value, **solver_options):
    """(r, J, L, ok): :func:`residual_jacobian`'s r, J and ok, and L (B, N, P), the
    Jacobian in z of each observation's log sigma_i, scaled by the square root of its
    Fisher weight (2 for normal noise, 1 for Laplace; 0 for padding and where sigma does
    not depend on theta, as for every built-in model), so that J^T J + L^T L is the
    Fisher information of the observations in z (:func:`fisher_information`). For
    Laplace noise J^T J is the location's Fisher information too (E[sign(r)^2] = 1)."""
    r, _, d_mu, d_log_sigma, ok = standardised(model, z, t, channel, value, **solver_options)
    if model.observation is not None:
        laplace = torch.as_tensor(model.observation.laplace, device=t.device)[channel]
        d_log_sigma = d_log_sigma * torch.where(laplace, 1.0, 2.0).to(z.dtype).sqrt()[..., None]
    return r, -d_mu, d_log_sigma, ok


def information_inverse(root: torch.Tensor) -> torch.Tensor:
    """(A^T A + I)^-1 (B, P, P) for square roots A (B, M, P) of information matrices (the
    stacked Jacobians of :func:`observation_jacobians`), from a QR factorisation of the
    stacked [A; I] = Q R: (R^T R)^-1 = R^-1 R^-T, symmetric and positive definite with a
    diagonal in (0, 1]. Why not invert A^T A + I: with sensitivities of 1e8 (a PEtab
    problem whose parameters span ten decades) its eigenvalues span 1e17, and its float64
    inverse had negative diagonal entries (Fujita, a good fit: -0.41 for a variance the
    factorisation puts at 1.6e-5), so intervals of width 0 and recalibration multipliers
    of 1e150. The factorisation works with A itself, whose condition number is the square
    root of A^T A's."""
    b, _, p = root.shape
    eye = torch.eye(p, dtype=root.dtype, device=root.device).expand(b, p, p)
    r = torch.linalg.qr(torch.cat([root, eye], 1), mode="r").R
    r_inv = torch.linalg.solve_triangular(r, eye, upper=True)
    return r_inv @ r_inv.transpose(1, 2)


def fisher_information(model: Model, z: torch.Tensor, t, channel, value, **solver_options):
    """(I (B, P, P), ok (B,)): the Fisher information of each observation set in z at z,
    J^T J + L^T L (:func:`observation_jacobians`): the Gauss-Newton Hessian J^T J of the
    NLL where sigma is fixed, plus the information on the noise scales where the model
    estimates them (2 (d log sigma / dz)^2 per normal observation). 0 where not ok."""
    _, jac, lsig, ok = observation_jacobians(model, z, t, channel, value, **solver_options)
    return jac.transpose(1, 2) @ jac + lsig.transpose(1, 2) @ lsig, ok


def method_for(model: Model, method: str) -> str:
    """The optimizer a fit by ``method`` runs for this model: ``method``, except that the
    trust region becomes BFGS where some observation's noise is Laplace: its NLL term
    |x - mu| / sigma is no square of a smooth residual, so a Gauss-Newton model of it
    does not exist (at x = mu the root's derivative is infinite). Every other NLL the
    models have is a sum of squares: sigma-scaled residuals, and where a noise scale is
    estimated, noise residuals beside them (:func:`_with_noise_residuals`).
    :attr:`Fit.method` says which ran."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "trust-region" and model.observation is not None and model.observation.laplace.any():
        return "bfgs"
    return method


@numba.njit(cache=True)
def _ndtr(x: float) -> float:
    """The standard normal CDF, computed as cephes' ndtr computes it (erf near 0, erfc in
    the tails, so that neither loses digits): within a few ulps of scipy.special.ndtr,
    which :func:`priors.from_z` uses."""
    y = x * 0.7071067811865476
    z = abs(y)
    if z < 0.7071067811865476:
        return 0.5 + 0.5 * math.erf(y)
    c = 0.5 * math.erfc(z)
    return 1.0 - c if y > 0.0 else c


@numba.njit(cache=True)
def _z_map_into(z, a, b, is_log, theta, dtheta):
    """theta = from_z(z) and d theta / d z into theta, dtheta (b, P): the map of
    :func:`priors.from_z_and_derivative` (u = ndtr(z), w = a + u b, theta = exp(w) for a
    log-uniform column, else w), in one compiled pass instead of a dozen numpy calls
    (which cost more than an mmk solve)."""
    inv_sqrt_2pi = 0.3989422804014327
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zj = z[i, j]
            w = a[j] + _ndtr(zj) * b[j]
            th = math.exp(w) if is_log[j] else w
            theta[i, j] = th
            dtheta[i, j] = (th * b[j] if is_log[j] else b[j]) * (math.exp(-0.5 * zj * zj) * inv_sqrt_2pi)


@numba.njit(cache=True)
def _assemble(rows, states, sens, status, state, value, scale, dtheta, r, J):
    """The sigma-scaled residuals r[:, :M] of observation rows ``rows`` (M of them a row,
    ``state``'s width) from the solved states (b, M, S) and, where J has rows, their
    Jacobian in z J[:, :M] (b, M, P) from the states' sensitivities in theta (b, M, S,
    P) and d theta / d z; NaN residuals (and a zero Jacobian) where the solve failed."""
    want = J.shape[0] > 0
    for i in range(len(rows)):
        row = rows[i]
        ok = status[i] == 0
        for k in range(state.shape[1]):
            s = state[row, k]
            w = scale[row, k]
            r[i, k] = w * (value[row, k] - states[i, k, s]) if ok else np.nan
            if want:
                for q in range(J.shape[2]):
                    J[i, k, q] = -(w * sens[i, k, s, q]) * dtheta[i, q] if ok else 0.0


@numba.njit(error_model="numpy")
def _native_residuals(
    initial_batch, solve_batch, z, rows, jacobian, affine, theta, dtheta, a, b, is_log, t_obs, state, value, scale,
    with_prior, rtol, atol, max_steps, A, C, n_states, r, J,
):  # fmt: skip
    """:func:`residual_functions`' residuals r (n, M) and, with ``jacobian``, their
    Jacobian J (n, M, P) in z at z (n, P) for the observation sets ``rows``, in place,
    from one model's native kernels (``initial_batch``, ``solve_batch``: compiled
    against them, :func:`_native_kernels`). theta = from_z(z) and d theta / dz are
    computed here where the priors are ``affine``, else given. r's columns past the
    observations (M > N) are the prior's residuals, z where ``with_prior[row]`` (an
    identity block in J), else 0."""
    n, n_args = z.shape
    n_obs = t_obs.shape[1]
    if affine:
        _z_map_into(z, a, b, is_log, theta, dtheta)
    y0, seeds = np.empty((n, n_states)), np.empty((n, n_states, n_args))
    initial_batch(theta, y0, seeds)
    states, status = np.empty((n, n_obs, n_states)), np.zeros(n, dtype=np.int8)
    sens = np.empty((n, n_obs, n_states, n_args) if jacobian else (0, 0, 0, 0))
    t_rows = np.empty((n, n_obs))
    for i in range(n):
        t_rows[i] = t_obs[rows[i]]
    solve_batch(
        y0, seeds if jacobian else np.empty((n, n_states, 0)), 0, theta, t_rows, rtol, atol, max_steps, jacobian, A, C,
        states, sens, status,
    )  # fmt: skip
    _assemble(rows, states, sens, status, state, value, scale, dtheta, r, J if jacobian else J[:0])
    for i in range(n if r.shape[1] > n_obs else 0):
        add = with_prior[rows[i]]
        for j in range(n_args):
            r[i, n_obs + j] = z[i, j] if add else 0.0
            if jacobian:
                for q in range(n_args):
                    J[i, n_obs + j, q] = 1.0 if add and q == j else 0.0


# :func:`_native_residuals` compiled against one model's kernels (``_m``), and the trust
# region's rounds with it (:func:`~.trust_region.trust_region`'s ``rounds``): each round
# an evaluation of the running problems (residuals alone for a probe) and their
# :func:`~.trust_region._round`, without returning to Python, where for a refinement's
# one or two problems a round's interpreted glue (~20 us) is an eighth of an E. coli
# round. Stops after the round in which a problem finished (the batch then changes);
# returns the number of rounds run.
_KERNELS_BODY = """import numba
import numpy as np

import mechinfer.fit.mle as _mle
import mechinfer.fit.trust_region as _tr


@numba.njit(cache=True, error_model="numpy")
def residuals(z, rows, jacobian, affine, theta, dtheta, a, b, is_log, t_obs, state, value, scale, with_prior, rtol,
              atol, max_steps, A, C, n_states, r, J):
    _mle._native_residuals(_m.initial_batch, _m.solve_batch, z, rows, jacobian, affine, theta, dtheta, a, b, is_log,
                           t_obs, state, value, scale, with_prior, rtol, atol, max_steps, A, C, n_states, r, J)


@numba.njit(cache=True, error_model="numpy")
def rounds(affine, a, b, is_log, t_obs, state, value, scale, with_prior, rtol, atol, max_steps, A, C, n_states, x, f, g,
           H, r_cur, J_cur, radius, x_try, pred, trials, fresh, probe, v, lam, free, w, V, aa, nfree, decs, idx, x_all,
           f_all, iterations, evaluations, box, gtol, ftol, f_atol, stall_atol, accelerate, max_trials, max_iter, done,
           max_rounds):
    n, p = x.shape
    m = r_cur.shape[1]
    r_try, J_try = np.empty((n, m)), np.empty((n, m, p))
    theta, dtheta = np.empty_like(x), np.empty_like(x)
    x1, idx1, r1, J1 = np.empty((1, p)), np.empty(1, dtype=np.int64), np.empty((1, m)), np.empty((1, m, p))
    theta1, dtheta1 = np.empty((1, p)), np.empty((1, p))
    for k in range(max_rounds):
        probes = 0
        for i in range(n):
            probes += probe[i]
        if probes == 0 or probes == n:  # all alike: one batched evaluation
            residuals(x_try, idx, probes == 0, affine, theta, dtheta, a, b, is_log, t_obs, state, value, scale,
                      with_prior, rtol, atol, max_steps, A, C, n_states, r_try, J_try)
        else:  # each problem as it needs, through one-row buffers (the same compiled residuals)
            for i in range(n):
                x1[0] = x_try[i]
                idx1[0] = idx[i]
                residuals(x1, idx1, not probe[i], affine, theta1, dtheta1, a, b, is_log, t_obs, state, value,
                          scale, with_prior, rtol, atol, max_steps, A, C, n_states, r1, J1)
                r_try[i] = r1[0]
                if not probe[i]:
                    J_try[i] = J1[0]
        _tr._round(x, f, g, H, r_cur, J_cur, radius, x_try, pred, trials, fresh, probe, v, lam, free, w, V, aa, nfree,
                   decs, idx, x_all, f_all, iterations, evaluations, r_try, J_try, box, gtol, ftol, f_atol, stall_atol,
                   accelerate, max_trials, max_iter, done)
        for i in range(n):
            if done[i] >= 0:
                return k + 1
    return max_rounds
"""


def _native_kernels(system: native.NativeSystem):
    """:data:`_KERNELS_BODY`'s ``residuals`` and ``rounds`` for one model's native
    kernels, compiled once per machine and cached with its generated module."""
    return native.companion(system, "fit", _KERNELS_BODY, depends_on=(sys.modules[__name__], _tr_module))


def residuals(model: Model, t, channel, value, device=None, prior=False, *, jacobian: bool = True, **solver_options):
    """:func:`residual_functions`' first (``jacobian``) or second function."""
    return residual_functions(model, t, channel, value, device, prior, **solver_options)[0 if jacobian else 1]


def residual_functions(model: Model, t, channel, value, device=None, prior=False, **solver_options):
    """(fun, residuals_only) for :func:`~.trust_region.trust_region`, prepared once.

    fun(z, rows) -> (r (b, M), J (b, M, P)) for :func:`~.trust_region.trust_region`:
    the sigma-scaled residuals of the observation sets ``rows`` at z and their Jacobian
    in z, so that |r|^2 / 2 is :func:`objective`'s value. NaN residuals where the solver
    failed. ``prior`` (for all sets or per set) appends z itself as P more residuals
    (an identity block in J, zero for the sets without it): |z|^2 / 2, the N(0, I)
    prior's term. On the CPU with the native solver, its forward sensitivities, in one
    compiled call of :func:`_native_residuals` (at the batch of one refinement, torch's
    or numpy's per-operation cost would exceed an mmk solve), and ``fun.rounds``, the
    trust region's compiled rounds with it (:data:`_KERNELS_BODY`; where the priors are
    affine); for a model with an observation model of its own (a PEtab problem's), the
    residuals of :func:`_with_noise_residuals` compiled by :mod:`.observed`; elsewhere
    :func:`residual_jacobian`. residuals_only(z, rows) -> r alone: with
    the native solver a plain solve, a fifth of fun's cost for E. coli; elsewhere fun's,
    J dropped. Both take tensors or numpy arrays (z float64, rows int64)."""
    with_prior = np.broadcast_to(np.asarray(prior, dtype=bool), (np.shape(t)[0],)).copy()
    any_prior = bool(with_prior.any())
    build = term(model).native if model.observation is None else None  # its kernels observe states directly
    on_cpu = device is None or torch.device(device).type == "cpu"
    if on_cpu and model.observation is not None and uses_native_solver(**solver_options):
        found = _observed.residual_functions(model, t, channel, value, with_prior, **solver_options)
        if found is not None:
            return found
    if on_cpu and uses_native_solver(**solver_options) and build is not None:  # numpy only, no torch
        obs = likelihood.SortedObservations.of(model, t, channel, value)
        scale = np.sqrt(obs.weight)  # 1 / sigma, 0 for padding
        system = build()
        tolerances = {
            "rtol": solver_options.get("rtol", _solver.RTOL),
            "atol": solver_options.get("atol", _solver.ATOL),
            "max_steps": solver_options.get("max_steps", _solver.MAX_STEPS),
        }
        a, b, is_log = (np.ascontiguousarray(c) for c in priors._affine(model.priors, np.empty(0)))
        affine = priors.is_affine(model.priors)
        kernels = _native_kernels(system)
        n_states, n_args = system.n_states, system.n_args
        rtol, atol, max_steps = float(tolerances["rtol"]), float(tolerances["atol"]), int(tolerances["max_steps"])
        n_res = obs.t.shape[1] + (n_args if any_prior else 0)
        no_jac = np.zeros((0, n_res, n_args))
        columns = (np.ascontiguousarray(c) for c in (obs.t, obs.state, obs.value, scale))
        data = (a, b, is_log, *columns, with_prior, rtol, atol, max_steps, native._A, native._C)

        def solved(z, rows, jacobian: bool):
            """One compiled call: at the batch of one refinement, a dozen numpy calls
            around the solve cost as much as an mmk solve."""
            z_np = np.ascontiguousarray(z if isinstance(z, np.ndarray) else z.detach().cpu().numpy(), dtype=np.float64)
            r_np = np.ascontiguousarray(rows if isinstance(rows, np.ndarray) else rows.cpu().numpy(), dtype=np.int64)
            n = len(z_np)
            if affine:
                theta, dtheta = np.empty((n, n_args)), np.empty((n, n_args))
            else:  # a truncated prior's quantile: scipy's
                theta, dtheta = (np.ascontiguousarray(c) for c in priors.from_z_and_derivative(model.priors, z_np))
            r = np.empty((n, n_res))
            jac = np.empty((n, n_res, n_args)) if jacobian else no_jac
            kernels.residuals(z_np, r_np, jacobian, affine, theta, dtheta, *data, n_states, r, jac)
            return r, (jac if jacobian else None)

        def native_fun(z, rows):
            return solved(z, rows, True)

        def native_residuals(z, rows):
            return solved(z, rows, False)[0]

        def rounds(state: tuple, max_rounds: int) -> int:
            return kernels.rounds(affine, *data, n_states, *state, max_rounds)

        if affine:  # theta from z inside the compiled rounds
            native_fun.rounds = rounds  # type: ignore[attr-defined]
        return native_fun, native_residuals

    t, channel, value = _tensors(t, channel, value, device)
    eye = np.eye(model.n_parameters)

    def with_prior_rows(z: np.ndarray, rows: np.ndarray, r: np.ndarray, jac: np.ndarray | None):
        # P more columns whenever any set has the prior (zero for the others), whichever
        # rows are evaluated: the trust region keeps each problem's residuals between calls
        if not any_prior:
            return r, jac
        add = with_prior[rows]
        r = np.concatenate([r, np.where(add[:, None], z, 0.0)], axis=1)
        if jac is not None:
            jac = np.concatenate([jac, np.where(add[:, None, None], eye, 0.0)], axis=1)
        return r, jac

    observed = model.observation is not None
    mask = likelihood.observed_mask(t, value)

    def fun(z, rows):
        z, rows = torch.as_tensor(z), torch.as_tensor(rows)
        step = max(1, JACOBIAN_ROWS // t.shape[1])
        parts = []
        for i in range(0, len(rows), step):
            zi, ri = z[i : i + step].to(t.device), rows[i : i + step].to(t.device)
            if observed:
                r, jac, ok = _with_noise_residuals(
                    mask[ri], *standardised(model, zi, t[ri], channel[ri], value[ri], **solver_options)
                )
            else:
                r, jac, ok = residual_jacobian(model, zi, t[ri], channel[ri], value[ri], **solver_options)
            parts.append((torch.where(ok[:, None], r, torch.nan), jac))
        r_all = torch.cat([r for r, _ in parts]).cpu().numpy()
        jac_all = torch.cat([j for _, j in parts]).cpu().numpy()
        r_all, jac_all = with_prior_rows(z.detach().cpu().numpy(), rows.cpu().numpy(), r_all, jac_all)
        return torch.from_numpy(r_all), torch.from_numpy(jac_all)

    def observed_residuals(z, rows):
        """The residuals alone for a model with an observation model of its own: one plain solve."""
        z, rows = torch.as_tensor(z).to(t.device), torch.as_tensor(rows).to(t.device)
        with torch.no_grad():
            mu, sigma, status = likelihood.predict_with_noise(
                model, model.from_z(z), t[rows], channel[rows], **solver_options
            )
        m = mask[rows]
        sd = torch.where(m, sigma, torch.ones_like(sigma))
        r = torch.where(m, (value[rows] - mu) / sd, 0.0)
        r = torch.cat([r, _noise_residuals(m, torch.log(sd))], 1)
        r = torch.where((status == SolveStatus.OK)[:, None], r, torch.nan).cpu().numpy()
        return with_prior_rows(z.cpu().numpy(), rows.cpu().numpy(), r, None)[0]

    return fun, (observed_residuals if observed else (lambda z, rows: fun(z, rows)[0]))


# The offset c in the noise residuals sqrt(2 (log sigma_i + c)) of a model whose noise
# scales may depend on the parameters (:func:`_with_noise_residuals`): half their square
# is log sigma_i + c, so the sum of squares is the NLL plus c per observation. It must
# keep log sigma_i + c > 0 wherever a fit goes: 50 does for sigma > 2e-22 (AMICI's
# residual form of such likelihoods uses the same offset); a point with a smaller sigma
# gets a NaN residual, and the trust region rejects it.
NOISE_OFFSET = 50.0


def _noise_residuals(mask, log_sigma):
    """s_i = sqrt(2 (log sigma_i + NOISE_OFFSET)) of the observed entries, 0 for padding."""
    return torch.where(mask, torch.sqrt(2.0 * (log_sigma + NOISE_OFFSET)), 0.0)


def _with_noise_residuals(mask, r, log_sigma, d_mu, d_log_sigma, ok):
    """The trust region's residuals (b, 2 N) and Jacobian (b, 2 N, P) for a model with an
    observation model of its own, from :func:`standardised`'s pieces: the standardised
    residuals r_i = (x_i - mu_i) / sigma_i with sigma at theta (d r_i = -d mu_i / sigma_i
    - r_i d log sigma_i), then the noise residuals s_i = sqrt(2 (log sigma_i + c))
    (:data:`NOISE_OFFSET`; d s_i = d log sigma_i / s_i). Half the sum of their squares is
    the NLL plus c per observation. The Gauss-Newton Hessian then has curvature along a
    noise scale where the Fisher information has it: through r_i d log sigma_i, about 1
    per observation near the optimum (where r_i^2 averages 1) against the Fisher
    information's 2; s_i adds 1 / s_i^2, a hundredth of that."""
    s = _noise_residuals(mask, log_sigma)
    d_r = -d_mu - r[..., None] * d_log_sigma
    d_s = torch.where(mask[..., None], d_log_sigma / torch.where(mask, s, 1.0)[..., None], 0.0)
    ok = ok & torch.isfinite(s).all(1)
    return torch.cat([r, s], 1), torch.cat([d_r, d_s], 1), ok


def gauss_newton_h0(model: Model, t, channel, value, device=None, **solver_options):
    """h0(z, rows) for :func:`bfgs`: the inverse of the Gauss-Newton Hessian of the NLL
    plus the identity, (J^T J + I)^-1 with J the Jacobian of the sigma-scaled residuals
    in z. Near a fit the Gauss-Newton Hessian is close to the true one, so BFGS starts
    with the curvature it would otherwise spend ~P iterations learning; the identity
    (the curvature of the N(0, 1) prior in z) bounds the steps along directions the
    observations do not determine. A row whose solve fails gets the identity. Where the
    model estimates its noise scales, J^T J is the Fisher information
    (:func:`fisher_information`), which adds their curvature."""
    t, channel, value = _tensors(t, channel, value, device)

    def h0(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        z, rows = z.to(t.device), rows.to(t.device)
        step = max(1, JACOBIAN_ROWS // t.shape[1])
        return torch.cat([_h0(z[i : i + step], rows[i : i + step]) for i in range(0, len(rows), step)])

    def _h0(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        _, jac, lsig, _ = observation_jacobians(model, z, t[rows], channel[rows], value[rows], **solver_options)
        return information_inverse(torch.cat([jac, lsig], 1))  # (J^T J + L^T L + I)^-1

    return h0


def fit(
    model: Model,
    t,
    channel,
    value,
    z0,
    *,
    max_iter: int = MAX_ITER,
    gtol: float = 1e-5,
    max_batch: int = MAX_BATCH,
    hessian: str | Sequence[str] | np.ndarray = "gauss-newton",
    compile: bool | None = None,
    deadline: float | Sequence[float] | np.ndarray | None = None,
    device: str | torch.device | None = None,
    prior: bool | Sequence[bool] | np.ndarray = False,
    method: str = "bfgs",
    space: str = "auto",
    **solver_options,
) -> Fit:
    """One start per observation set: t, channel, value (B, N) (NaN-padded), z0 (B, P).

    ``method``: "bfgs" (:func:`~mechinfer.fit.bfgs.bfgs`, the default) or "trust-region"
    (:func:`~mechinfer.fit.trust_region.trust_region`: Gauss-Newton on the residuals'
    Jacobian, in far fewer evaluations, every iterate inside |z_i| <= Z_BOX; ``hessian``
    does not apply to it). Where some observation's noise is Laplace, the trust region
    does not apply and BFGS runs instead (:func:`method_for`); the result's ``method``
    says which ran.
    The solver's tolerances default to :func:`fit_tolerances` of the model.

    ``space``: where BFGS moves, "z" (SPEC 3) or "u" (:func:`u_objective`: the prior's
    CDF, linear in each parameter's scale, reflected at its bounds); "auto" takes "u"
    for BFGS from prior draws (H0 = I, no prior term) on a model with an observation
    model of its own, "z" otherwise. In z a parameter that a step carries towards its
    bound stalls there (d theta / dz = phi(z) vanishes: 5e-15 at the bound's |z| = 7.94)
    and BFGS reports convergence: on Boehm's measurements 64 prior starts in z ended at
    best at log-likelihood -150.28 (published optimum -138.22), in u one of the first 16
    reaches it. The trust region moves in "z", "u" (the same coordinate, inside its box)
    or "z+u" (:func:`_trust_region_fit`: in z, then the rows without the prior term on
    from there in u), which "auto" takes for a model with an observation model of its
    own. The result (z, theta, nll) is the same kind of value in every space.

    ``hessian``: the initial inverse Hessian, "gauss-newton" (see :func:`gauss_newton_h0`)
    or "identity" (textbook BFGS), for all rows or per row (a sequence of B names).
    ``compile`` (the torch backend only) runs the solver's steps compiled (default, unless
    the environment sets MECHINFER_COMPILE=0): BFGS batches are hundreds of problems
    evaluated hundreds of times, which repays the one-off compilation. ``deadline``: wall-clock time
    (``time.time()``), for all rows or per row, after which a fit stops at its best
    point so far (status DEADLINE; see :func:`~mechinfer.fit.bfgs.bfgs`). ``device``:
    where the NLL and its gradient are evaluated (default the CPU, with the native
    solver; a CUDA device runs the batched torch steps there). ``prior`` (for all rows or
    per row): fit the maximum a posteriori point in z (the NLL plus the N(0, I) prior's
    |z|^2 / 2) instead of the maximum-likelihood one; ``nll`` then holds that sum."""
    if compile is None:
        compile = _compile_default()
    method = method_for(model, method)
    names = np.broadcast_to(np.asarray(hessian, dtype=object), (len(z0),))
    bad = set(names) - {"gauss-newton", "identity"}
    if bad:
        raise ValueError(f"hessian must be 'gauss-newton' or 'identity', got {sorted(bad)}")
    use_h0 = torch.tensor([n == "gauss-newton" for n in names], dtype=torch.bool)
    z0 = torch.as_tensor(np.asarray(z0, dtype=np.float64), device=device)
    solver_options = _fit_options(solver_options, model)
    if space == "auto":
        plain = method == "bfgs" and not use_h0.any() and not np.any(prior)
        if plain and model.observation is not None:
            space = "u"
        elif method == "trust-region" and model.observation is not None:
            space = "z+u"
        else:
            space = "z"
    if space not in ("z", "u", "z+u"):
        raise ValueError(f"space must be 'z', 'u', 'z+u' or 'auto', got {space!r}")
    if space == "u" and np.any(prior):
        raise ValueError("space 'u' is for fits without the prior term")
    if space == "z+u" and method != "trust-region":
        raise ValueError("space 'z+u' is the trust region's")
    limit = None if deadline is None else torch.tensor(np.broadcast_to(deadline, (len(z0),)), dtype=torch.float64)
    if method == "trust-region":
        start = time.perf_counter()
        result = _trust_region_fit(
            model,
            t,
            channel,
            value,
            z0,
            prior,
            space,
            device,
            compile,
            max_iter,
            gtol,
            max_batch,
            limit,
            solver_options,
        )
    elif space == "u":
        fun = u_objective(model, t, channel, value, device, compile=compile, **solver_options)
        start = time.perf_counter()
        result = bfgs(fun, z_to_v(z0), max_iter=max_iter, gtol=gtol, max_batch=max_batch, deadline=limit)
        result.x = v_to_z(result.x)
    else:
        fun = objective(model, t, channel, value, device, prior, compile=compile, **solver_options)
        start = time.perf_counter()
        h0 = (
            gauss_newton_h0(model, t, channel, value, device, compile=compile, **solver_options)
            if use_h0.any()
            else None
        )
        result = bfgs(fun, z0, max_iter=max_iter, gtol=gtol, max_batch=max_batch, h0=h0, use_h0=use_h0, deadline=limit)
    wall = time.perf_counter() - start
    z = result.x.cpu().numpy()
    f = result.f.cpu().numpy()
    if method == "trust-region" and model.observation is not None:  # |r|^2 / 2 -> the NLL
        t_, _, value_ = _tensors(t, channel, value)
        f = f - NOISE_OFFSET * likelihood.observed_mask(t_, value_).sum(1).numpy()
    return Fit(
        z=z,
        theta=model.from_z(z),
        nll=f,
        iterations=result.iterations.numpy(),
        evaluations=result.evaluations.numpy(),
        status=result.status.numpy().astype(np.int8),
        seconds=result.seconds.numpy(),
        wall_s=wall,
        method=method,
        space=space,
    )


V_HALF = math.sqrt(3.0)  # u space scaled to v = (u - 1/2) sqrt(12): the prior's standard deviation 1, as in z
V_BOX = V_HALF * (1.0 - 2.0 * priors.U_EPS)  # the trust region's box in v: u within [U_EPS, 1 - U_EPS]


def z_to_v(z: torch.Tensor) -> torch.Tensor:
    """v = (Phi(z) - 1/2) sqrt(12) in [-sqrt(3), sqrt(3)]: the fit coordinate of
    :func:`u_objective` (u = Phi(z), the prior's CDF)."""
    return (torch.special.ndtr(z) - 0.5) * (2 * V_HALF)


def reflect(v: torch.Tensor) -> torch.Tensor:
    """R -> [-sqrt(3), sqrt(3)], the identity inside, mirrored at each bound (slope +-1
    everywhere: no step stalls at a bound)."""
    y = torch.remainder(v + V_HALF, 4 * V_HALF)
    return torch.where(y <= 2 * V_HALF, y, 4 * V_HALF - y) - V_HALF


def v_to_z(v: torch.Tensor) -> torch.Tensor:
    """z of a fit coordinate v (its reflection into the bounds), clamped where z is
    (:data:`mechinfer.models.priors.U_EPS`) and so inside the trust region's box
    (|z| <= Z_MAX: 1 - U_EPS rounds to a u whose ndtri is 1e-4 beyond it)."""
    u = (reflect(v) / (2 * V_HALF) + 0.5).clamp(priors.U_EPS, 1.0 - priors.U_EPS)
    return torch.special.ndtri(u).clamp(-priors.Z_MAX, priors.Z_MAX)


def _trust_region_fit(
    model, t, channel, value, z0, prior, space, device, compile, max_iter, gtol, max_batch, limit, solver_options
):
    """:func:`fit`'s trust region in ``space``: "z", "u" (in v, :func:`_in_v`), or "z+u":
    in z, then the rows without the prior term on from there in v. Why the second phase:
    near a prior bound d theta / dz (phi(z) times the prior's span) vanishes, so z's
    Gauss-Newton steps for a parameter whose optimum lies near its bound shrink to
    nothing, while in v (linear in the parameter's scale) it moves as freely as anywhere;
    started from z's fit, v only lowers the NLL. Measured on PEtab problems (issue 25):
    Boehm_JProteomeRes2014's published optimum has k_exp_hetero at z = -4.0; from the
    prior's median z alone ends at log-likelihood -193.76, z+u at -149.59, and of 4 prior
    draws z alone reaches -147.56 at best, z+u the published -138.22 from one. On
    Elowitz_Nature2000 the second phase also restarts fits that z left at points where
    the Gauss-Newton model sees no decrease (a restart in z gains as much): of 32 SPEC
    test refinements from the small run's network, 28% end > 0.5 lower in NLL, for +50
    evaluations a fit on average (57 -> 107); its real measurements' refinement goes
    from -6.87 to 20.49. v alone from the start moves into the bounds at once and stops
    on plateaus there (Schwen_PONE2014: -4235.6 from the median, z alone -971.9)."""
    common = dict(
        max_iter=max_iter,
        gtol=gtol,
        f_atol=NLL_ATOL,
        stall_atol=None if model.observation is None else OBSERVATION_STALL,
        radius0=FIRST_RADIUS,
        numpy_io=True,
        max_batch=max_batch,
    )
    res, plain = residual_functions(model, t, channel, value, device, prior, compile=compile, **solver_options)
    if space == "u":
        res_v, plain_v = _in_v(res, plain)
        result = trust_region(res_v, z_to_v(z0), box=V_BOX, residuals_only=plain_v, deadline=limit, **common)
        result.x = v_to_z(result.x)
        return result
    rounds = getattr(res, "rounds", None)  # the native solver's compiled rounds
    result = trust_region(res, z0, residuals_only=plain, rounds=rounds, deadline=limit, **common)
    if space == "z":
        return result
    with_prior = np.broadcast_to(np.asarray(prior, dtype=bool), (len(z0),))
    rows = np.flatnonzero(~with_prior & np.isfinite(result.f.cpu().numpy()))
    if not len(rows):
        return result
    res_v, plain_v = _in_v(res, plain)
    on = trust_region(
        lambda v, r: res_v(v, rows[r]),
        z_to_v(result.x[rows]),
        box=V_BOX,
        residuals_only=lambda v, r: plain_v(v, rows[r]),
        deadline=None if limit is None else limit[rows],
        **common,
    )
    idx = torch.from_numpy(rows)
    result.x[idx] = v_to_z(on.x).to(result.x)
    result.f[idx] = on.f.to(result.f)
    result.status[idx] = on.status
    for name in ("iterations", "evaluations", "seconds"):
        getattr(result, name)[idx] += getattr(on, name)
    return result


def _in_v(fun, residuals_only):
    """:func:`residual_functions`' pair in the fit coordinate v (:func:`z_to_v`) instead
    of z, for the trust region inside v's box |v| <= sqrt(3) (u within [U_EPS, 1 - U_EPS],
    where z is not clamped): the Jacobian's columns times dz/dv = 1 / (sqrt(12) phi(z))."""

    def z_of(v) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
        u = np.clip(v / (2 * V_HALF) + 0.5, priors.U_EPS, 1.0 - priors.U_EPS)
        z = scipy.special.ndtri(u)
        return z, 1.0 / (2 * V_HALF * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))

    def fun_v(v, rows):
        z, dz = z_of(v)
        r, jac = fun(z, rows)
        return r, np.asarray(jac, dtype=np.float64) * dz[:, None, :]

    return fun_v, lambda v, rows: residuals_only(z_of(v)[0], rows)


def u_objective(model: Model, t, channel, value, device=None, **solver_options):
    """fun(v, rows) -> (NLL, dNLL/dv) as :func:`objective` gives them in z, in the fit
    coordinate v (:func:`z_to_v`, mirrored at the bounds by :func:`reflect`): theta is
    affine (or exp-affine, for a log-scale parameter) in v for a uniform prior, the
    prior's quantile of v's u for another, so its gradient does not vanish at a bound as
    z's does. By autograd through :func:`likelihood.nll`."""
    t, channel, value = _tensors(t, channel, value, device)

    def fun(v: torch.Tensor, rows: torch.Tensor):
        rows = rows.to(t.device)
        v = v.detach().to(t.device).requires_grad_(True)
        with torch.enable_grad():
            theta = priors.from_u(model.priors, reflect(v) / (2 * V_HALF) + 0.5)
            f = likelihood.nll(model, theta, t[rows], channel[rows], value[rows], **solver_options)
            (g,) = torch.autograd.grad(torch.nan_to_num(f, nan=0.0).sum(), v)
        return f.detach(), g

    return fun


def prior_starts(model: Model, sample_ids, n_starts: int, seed: int) -> np.ndarray:
    """Start points drawn from the prior, in z space (where the prior is N(0, 1)):
    (len(sample_ids), n_starts, P). A sample's starts depend on (seed, sample_id) only,
    so start k of a sample is the same whether 1 or 8 starts are run and whatever the
    chunking."""
    return np.stack(
        [np.random.default_rng([seed, int(i)]).standard_normal((n_starts, model.n_parameters)) for i in sample_ids]
    )


def nll(model: Model, t, channel, value, z, *, compile: bool | None = None, **solver_options) -> np.ndarray:
    """The NLL of z (B, P) for each set, solved as a fit solves it (FIT_TOL, compiled
    steps by default) but without a gradient: what a fit of these sets would report for
    z, at a fraction of the simulator's cost. NaN where the solver failed."""
    if compile is None:
        compile = _compile_default()
    t, channel, value = _tensors(t, channel, value)
    z = torch.as_tensor(np.asarray(z, dtype=np.float64))
    with torch.no_grad():
        f = likelihood.nll(
            model, model.from_z(z), t, channel, value, compile=compile, **_fit_options(solver_options, model)
        )
    return f.numpy()


def uses_native_solver(**solver_options) -> bool:
    """Whether fits with these options run the native CPU solver (then there are no torch
    graphs to compile: only the model's native code to load, or to compile once per
    machine)."""
    return solver_options.get("backend", "auto") != "torch" and _solver.native.available()


def warm_up(model: Model, t, channel, value, *, gradient: bool = True, **solver_options) -> float:
    """Make the first fit or request as fast as the next: load (the first time on a
    machine, compile) the model's native solver and run one evaluation; or, for the torch
    backend, compile its steps for fits (``gradient``: one NLL + gradient evaluation) or
    for :func:`nll` at batch sizes 1 and 2 (the second compiles the batch-size-generic
    graph). Returns seconds; 0 when there is nothing to prepare (torch, compilation off)."""
    start = time.perf_counter()
    native = uses_native_solver(**solver_options)
    if not native and not _compile_default():
        return 0.0
    for n in [1] if native else sorted({1, min(2, len(t))}):
        rows = torch.arange(n)
        z = torch.zeros(n, model.n_parameters, dtype=torch.float64)
        if gradient:
            objective(model, t, channel, value, compile=True, **_fit_options(solver_options, model))(z, rows)
        else:
            nll(
                model,
                np.asarray(t)[:n],
                np.asarray(channel)[:n],
                np.asarray(value)[:n],
                z,
                compile=True,
                **solver_options,
            )
    return time.perf_counter() - start
