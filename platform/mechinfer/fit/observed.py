"""The trust region's residuals and their Jacobian for a model with an observation model
of its own (a PEtab problem's), compiled: the native solver's states and forward
sensitivities, then the observable and noise formulas with their partial derivatives
and the residuals in one compiled call.

Why: :meth:`~mechinfer.models.observation.Observation.predict_jacobian` runs the formulas
on torch dual numbers, a few microseconds per tensor operation. From the prior's median
on Boehm's measurements (86 Jacobians, 84 probes) that glue took 0.43 of 0.71 s and the
solves the rest; on Fujita the solves were half. Here the formulas are differentiated
once, symbolically (:mod:`mechinfer.solver.symbolic`, as the rate laws are), printed as
scalar functions, and the residuals of :func:`mechinfer.fit.mle.residual_functions`
(``(x - mu) / sigma``, then the noise residuals ``sqrt(2 (log sigma + c))``, then the
prior's z) are assembled from the solve's arrays. The numbers are those of the torch
path up to round-off (the tests compare them); the trust region's path can still
differ where a fit is chaotic (on Fujita from the prior's median, moving the start by
1e-12 changes the fit's end from NLL 917 to 818).

Per observation: its condition's solve (one per row and condition the batch observes,
at the sorted times of the row's observations there, as the torch path solves), the
states there (time appended where it is not a state), its placeholders (a number, or
the parameter a measurement names), then

    d h / d theta_j = sum_s dh/ds_s  d s_s / d theta_j + dh/dp_j + sum_k dh/dq_k [q_k names theta_j]

for the observable h and the noise scale sigma alike, and mu = h, log h or log10 h per
the observable's transformation.
"""

from __future__ import annotations

import logging
import math
import sys

import numba
import numpy as np
import sympy
import torch

from .. import solver as _solver
from ..models import priors
from ..models.observation import _by_condition
from ..models.simulate import term
from ..solver import native
from ..solver.symbolic import Sym, _expr, _function

log = logging.getLogger(__name__)

_STATE, _ARGUMENT, _PLACEHOLDER = 0, 1, 2  # what a formula's variable is


def observable_source(observation, n_args: int):
    """Source of ``observe(o, s, p, q, out)`` (numba, generated) for the observables of
    ``observation``, and per observable the variables its formulas read: (kind (O, V),
    index (O, V), count (O,)), kind a state (time last), an argument or a placeholder.
    ``out`` receives h, sigma, then per variable v the pair (dh/dv, dsigma/dv).
    ``None`` where a formula has no derivative the native code can print."""
    n_s = observation.n_system_states + 1
    n_q = observation.placeholder_index.shape[2]
    s = sympy.symbols(f"s0:{n_s}", real=True)
    p = sympy.symbols(f"p0:{n_args}", real=True)
    q = sympy.symbols(f"q0:{n_q}", real=True)
    where = {**{x: (_STATE, i) for i, x in enumerate(s)}, **{x: (_ARGUMENT, i) for i, x in enumerate(p)}}
    where.update({x: (_PLACEHOLDER, i) for i, x in enumerate(q)})
    functions, variables = [], []
    for o, observable in enumerate(observation.observables):
        h, sd = (_expr(e) for e in observable.function([Sym(x) for x in s], [Sym(x) for x in p], [Sym(x) for x in q]))
        read = sorted((h.free_symbols | sd.free_symbols) & set(where), key=lambda x: where[x])
        try:
            partials = [d for x in read for d in (sympy.diff(h, x), sympy.diff(sd, x))]
        except ValueError:  # a function whose derivative has no native form (factorial)
            return None
        functions.append(_function(f"observe{o}", {"s": s, "p": p, "q": q}, {"out": [h, sd, *partials]}))
        variables.append([where[x] for x in read])
    width = max([len(v) for v in variables] + [1])
    kind = np.zeros((len(variables), width), dtype=np.int64)
    index = np.zeros((len(variables), width), dtype=np.int64)
    for o, read in enumerate(variables):
        for v, (k, i) in enumerate(read):
            kind[o, v], index[o, v] = k, i
    dispatch = ["def observe(o, s, p, q, out):"]
    dispatch += [f"    if o == {o}:\n        return observe{o}(s, p, q, out)" for o in range(len(functions))]
    dispatch.append("    return 0")
    text = "\n\n\n".join([*functions, "\n".join(dispatch)])
    jit = '@numba.njit(cache=True, error_model="numpy")\n'
    text = "import math\n\nimport numba\n\n\n" + text.replace("def ", jit + "def ")
    return text, (kind, index, np.array([len(v) for v in variables], dtype=np.int64))


# :func:`_assembled` compiled against one model's observables (``_o``) in a companion
# module (:func:`mechinfer.solver.native.companion`: numba caches no function that takes
# a compiled function as an argument). The solve is not in it: compiled into a caller,
# the solver's code is compiled again with it (~20 s a model), while from Python it costs
# one call more per evaluation.
_BODY = """import numba

import mechinfer.fit.observed as _obs
import {observe} as _o


@numba.njit(cache=True, error_model="numpy")
def assemble(theta, dtheta, z, rows, jacobian, args, t_rows, states, sens, status, point, observable, code, value,
             observed, q_index, q_value, append_time, kind, index, count, with_prior, noise_offset, r, J):
    _obs._assembled(_o.observe, theta, dtheta, z, rows, jacobian, args, t_rows, states, sens, status, point,
                    observable, code, value, observed, q_index, q_value, append_time, kind, index, count, with_prior,
                    noise_offset, r, J)
"""


@numba.njit(error_model="numpy")
def _assembled(
    observe, theta, dtheta, z, rows, jacobian, args, t_rows, states, sens, status, point, observable, code, value,
    observed, q_index, q_value, append_time, kind, index, count, with_prior, noise_offset, r, J,
):  # fmt: skip
    """Residuals r (n, 2 N + P or 2 N) of the sets ``rows`` at theta (n, P) and, with
    ``jacobian``, their Jacobian J in z (theta's derivative dtheta (n, P) applied), in
    place (see the module and :func:`residual_functions`), from the solves of row i's
    condition slot u in row i U + u of ``args`` (n U, P + K), ``t_rows`` (n U, W),
    ``states`` (n U, W, S), ``sens`` (n U, W, S, P + K) and ``status``. A row whose
    solve failed or whose numbers are not finite gets NaN residuals and a zero Jacobian
    (the prior's columns excepted)."""
    n, p = theta.shape
    n_cond, width, n_states = states.shape[0] // max(n, 1), states.shape[1], states.shape[2]
    n_obs = point.shape[1]
    s = np.empty(n_states + 1 if append_time else n_states)
    q = np.empty(q_index.shape[2])
    out = np.empty(2 + 2 * kind.shape[1])
    dh, dsd = np.empty(p), np.empty(p)
    ln10 = math.log(10.0)
    for i in range(n):
        row = rows[i]
        ok = True
        for u in range(n_cond):
            ok = ok and status[i * n_cond + u] == 0
        for k in range(n_obs if ok else 0):
            if not observed[row, k]:
                r[i, k] = 0.0
                r[i, n_obs + k] = 0.0
                if jacobian:
                    J[i, k] = 0.0
                    J[i, n_obs + k] = 0.0
                continue
            gk = i * n_cond + point[row, k] // width
            at = point[row, k] % width
            for j in range(n_states):
                s[j] = states[gk, at, j]
            if append_time:
                s[n_states] = t_rows[gk, at]
            for j in range(q.shape[0]):
                named = q_index[row, k, j]
                q[j] = theta[i, named] if named >= 0 else q_value[row, k, j]
            o = observable[row, k]
            observe(o, s, args[gk], q, out)
            h, sd = out[0], out[1]
            c = code[row, k]
            if c == 0:
                mu, slope = h, 1.0
            elif h > 0.0:
                mu = math.log(h) if c == 1 else math.log10(h)
                slope = 1.0 / h if c == 1 else 1.0 / (h * ln10)
            else:
                mu, slope = np.nan, np.nan
            res = (value[row, k] - mu) / sd
            log_sd = math.log(sd) if sd > 0.0 else np.nan
            noise = math.sqrt(2.0 * (log_sd + noise_offset)) if log_sd + noise_offset >= 0.0 else np.nan
            if not (math.isfinite(res) and math.isfinite(noise)):
                ok = False
                break
            r[i, k] = res
            r[i, n_obs + k] = noise
            if not jacobian:
                continue
            dh[:] = 0.0
            dsd[:] = 0.0
            for v in range(count[o]):
                d_h, d_sd, at_index = out[2 + 2 * v], out[3 + 2 * v], index[o, v]
                if kind[o, v] == _STATE:  # time (past the solver's states) has no sensitivity
                    if at_index < n_states:
                        for j in range(p):
                            ds = sens[gk, at, at_index, j]
                            dh[j] += d_h * ds
                            dsd[j] += d_sd * ds
                elif kind[o, v] == _ARGUMENT:  # theta's first p, then the condition's inputs
                    if at_index < p:
                        dh[at_index] += d_h
                        dsd[at_index] += d_sd
                else:  # a placeholder: a parameter where the measurement names one
                    named = q_index[row, k, at_index]
                    if named >= 0:
                        dh[named] += d_h
                        dsd[named] += d_sd
            for j in range(p):
                d_log_sd = dsd[j] / sd
                dr = (-(slope * dh[j]) / sd - res * d_log_sd) * dtheta[i, j]
                dn = d_log_sd / noise * dtheta[i, j]
                if not (math.isfinite(dr) and math.isfinite(dn)):
                    ok = False
                J[i, k, j] = dr
                J[i, n_obs + k, j] = dn
            if not ok:
                break
        if not ok:
            for k in range(2 * n_obs):
                r[i, k] = np.nan
                if jacobian:
                    J[i, k] = 0.0
        for j in range(r.shape[1] - 2 * n_obs):
            add = with_prior[row]
            r[i, 2 * n_obs + j] = z[i, j] if add else 0.0
            if jacobian:
                for m in range(p):
                    J[i, 2 * n_obs + j, m] = 1.0 if add and m == j else 0.0


def residual_functions(model, t, channel, value, with_prior: np.ndarray, **solver_options):
    """(fun, residuals_only) as :func:`mechinfer.fit.mle.residual_functions` returns them,
    for a model with an observation model of its own, on the native solver; ``None``
    where it does not apply (the options ask for torch, no native form of the equations
    or of a formula)."""
    from .mle import NOISE_OFFSET  # mle imports this module where it needs it

    found = _solver._native_with(term(model), torch.device("cpu"), solver_options)
    if found is None:
        return None
    system, tolerances = found
    kernels = _kernels(model, system)
    if kernels is None:
        return None
    assemble, (kind, index, count) = kernels
    obs = model.observation
    t, channel, value = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x for x in (t, channel, value))
    t, value = np.asarray(t, dtype=np.float64), np.asarray(value, dtype=np.float64)
    timed = np.isfinite(t)
    observed = timed & np.isfinite(value)
    t = np.where(timed, t, 0.0)
    channel = np.where(timed, channel, 0).astype(np.int64)
    value = np.where(observed, value, 0.0)
    condition = obs.channel_condition[channel]
    used = np.unique(condition)
    # grouped by condition and placeholders taken as the torch layer takes them (once
    # per fit, so its per-call cost does not matter): one implementation of each
    slot = np.searchsorted(used, condition)
    t_t, ch_t = torch.from_numpy(t), torch.from_numpy(channel)
    t_cond, position = (a.numpy() for a in _by_condition(t_t, torch.from_numpy(slot), len(used)))
    point = slot * t_cond.shape[2] + position  # where each observation's state is: slot * W + its place
    q_value, q_index = (a.numpy() for a in obs._placeholders(torch.zeros(len(t), 0, dtype=t_t.dtype), t_t, ch_t))
    inputs = obs.condition_inputs[used]
    data = (
        *(np.ascontiguousarray(a) for a in (point, obs.channel_observable[channel], obs.transformation[channel])),
        np.ascontiguousarray(value),
        np.ascontiguousarray(observed),
        np.ascontiguousarray(q_index, dtype=np.int64),
        np.ascontiguousarray(q_value, dtype=np.float64),
        system.n_states == obs.n_system_states,  # time is not a state: appended for the formulas
        kind,
        index,
        count,
        np.ascontiguousarray(with_prior),
        float(NOISE_OFFSET),
    )
    n_obs, n_p, n_cond = t.shape[1], model.n_parameters, len(used)
    n_res = 2 * n_obs + (n_p if with_prior.any() else 0)

    def solved(z, rows, jacobian: bool):
        z, rows = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x for x in (z, rows))
        z = np.ascontiguousarray(z, dtype=np.float64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        theta, dtheta = (np.ascontiguousarray(a) for a in priors.from_z_and_derivative(model.priors, z))
        n = len(z)
        args = np.concatenate([np.repeat(theta, n_cond, 0), np.tile(inputs, (n, 1))], 1)  # row i, slot u: i U + u
        t_rows = t_cond[rows].reshape(n * n_cond, -1)
        if jacobian:
            states, status, sens = system.solve_from_args(args, t_rows, **tolerances)
        else:
            y0, _ = system.initial(args)
            states, status, _ = system.solve(y0, args, t_rows, sensitivities=False, **tolerances)
            sens = np.zeros((0, 0, 0, 0))
        r = np.empty((n, n_res))
        jac = np.empty((n, n_res, n_p) if jacobian else (0, n_res, n_p))
        assemble(theta, dtheta, z, rows, jacobian, args, t_rows, states, sens, status, *data, r, jac)
        return r, jac

    return (lambda z, rows: solved(z, rows, True)), (lambda z, rows: solved(z, rows, False)[0])


def _kernels(model, system: native.NativeSystem):
    """(assemble, variables) of a model, generated and compiled once per machine (cached
    beside its native module) and looked up once per process; None where a formula has
    no form the native code takes (then the torch layer, which takes every formula the
    import does, computes the same residuals)."""
    cache = model.observation._cache
    if "kernels" not in cache:
        cache["kernels"] = None
        try:
            found = observable_source(model.observation, system.n_args)
            if found is not None:
                text, variables = found
                observe = native.companion(system, "observe", text)
                body = _BODY.format(observe=observe.__name__)
                kernels = native.companion(system, "observed", body, depends_on=(sys.modules[__name__],))
                _compiled(kernels.assemble, variables, model.n_parameters, system)
                cache["kernels"] = kernels.assemble, variables
        except Exception as err:  # a formula sympy or numba cannot take: the torch layer's
            first = (str(err).strip().splitlines() or [""])[0]
            log.info("%s: the observation formulas stay on torch (%s: %s)", model.name, type(err).__name__, first)
    return cache["kernels"]


def _compiled(assemble, variables, n_p: int, system: native.NativeSystem) -> None:
    """Compile ``assemble`` (numba, or load it from the disk cache) by one call on a row of
    one unobserved entry, with the argument types of every real call, so that a formula
    numba cannot compile shows here rather than in the middle of a fit."""
    kind, index, count = variables
    n_s, n_a = system.n_states, system.n_args
    one = lambda *shape, dtype=np.float64: np.zeros(shape, dtype=dtype)
    assemble(
        one(1, n_p), one(1, n_p), one(1, n_p), one(1, dtype=np.int64), True, one(1, n_a), one(1, 1), one(1, 1, n_s),
        one(1, 1, n_s, n_a), one(1, dtype=np.int8), one(1, 1, dtype=np.int64), one(1, 1, dtype=np.int64),
        one(1, 1, dtype=np.int64), one(1, 1), one(1, 1, dtype=bool), one(1, 1, 1, dtype=np.int64), one(1, 1, 1),
        True, kind, index, count, one(1, dtype=bool), 0.0, one(1, 2 + n_p), one(1, 2 + n_p, n_p),
    )  # fmt: skip


__all__ = ["observable_source", "residual_functions"]
