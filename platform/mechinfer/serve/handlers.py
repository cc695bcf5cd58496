"""What the HTTP API (SPEC 7) does, without the web framework: checking observation
lists, running the network (and optionally the refinement) on a batch of them, and
shaping answers. The Ray Serve application in ``serving/app.py`` wraps these."""

from __future__ import annotations

import math
import time

import numpy as np

from ..config import ServeArgs
from ..estimate.estimator import Estimator
from ..fit import mle

MAX_OBSERVATIONS = ServeArgs.model_fields["max_observations"].default  # unless configured otherwise


class BadRequest(ValueError):
    """The request names something that does not exist or breaks a limit (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def to_arrays(
    est: Estimator, observations: list[dict], max_observations: int = MAX_OBSERVATIONS, where: str = "observations"
):
    """One observation list ({"t", "channel", "value"} dicts, channel by name) as
    (t, channel index, value) arrays of shape (N,)."""
    m = est.model
    if not observations:
        raise BadRequest(f"{where} is empty: give at least one observation")
    if len(observations) > max_observations:
        raise BadRequest(f"{where} holds {len(observations)} observations; the limit is {max_observations}")
    t = np.empty(len(observations))
    ch = np.empty(len(observations), dtype=np.int64)
    v = np.empty(len(observations))
    for i, o in enumerate(observations):
        name = o["channel"]
        if name not in m.channels:
            raise BadRequest(
                f"{where}[{i}].channel: unknown channel {name!r} for {m.name}; channels are {list(m.channels)}"
            )
        for key in ("t", "value"):
            if not math.isfinite(o[key]):
                raise BadRequest(f"{where}[{i}].{key} is not a finite number")
        if not 0.0 <= o["t"] <= m.T:
            raise BadRequest(f"{where}[{i}].t = {o['t']:g} h is outside [0, {m.T:g}] h for {m.name}")
        t[i], ch[i], v[i] = o["t"], m.channels.index(name), o["value"]
    return t, ch, v


def to_observations(model, t, channel, value) -> list[dict]:
    """The inverse of :func:`to_arrays`: one set's (N,) arrays (NaN-padded entries
    dropped) as the request's {"t", "channel" (by name), "value"} dicts."""
    return [
        {"t": float(ti), "channel": model.channels[int(ci)], "value": float(vi)}
        for ti, ci, vi in zip(t, channel, value)
        if np.isfinite(ti)
    ]


def pad(sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Stack observation lists of different lengths into NaN-padded (B, N) arrays."""
    n = max(len(s[0]) for s in sets)
    t = np.full((len(sets), n), np.nan)
    v = np.full((len(sets), n), np.nan)
    ch = np.zeros((len(sets), n), dtype=np.int64)
    for i, (ti, ci, vi) in enumerate(sets):
        t[i, : len(ti)], ch[i, : len(ti)], v[i, : len(ti)] = ti, ci, vi
    return t, ch, v


def infer(est: Estimator, t, ch, v, compile: bool | None = None) -> dict:
    """Network estimates and their NLL for padded (B, N) arrays, with stage timings."""
    start = time.perf_counter()
    z = est.estimate_z(t, ch, v)
    network = time.perf_counter()
    nll = mle.nll(est.model, t, ch, v, z, compile=compile)
    return {
        "z": z,
        "nll": nll,
        "timing_ms": {"network": 1e3 * (network - start), "nll": 1e3 * (time.perf_counter() - network)},
    }


def refine(est: Estimator, t, ch, v, z, compile: bool | None = None) -> dict:
    start = time.perf_counter()
    fit = est.refine(t, ch, v, z, compile=compile)
    return {"z": fit.z, "nll": fit.nll, "timing_ms": {"refine": 1e3 * (time.perf_counter() - start)}}


def warm_up(est: Estimator, refine: bool, compile: bool | None = None) -> float:
    """Run :func:`infer` (and :func:`refine`) on made-up observation sets of batch 1 and
    2, so that a new replica compiles the solver before its first request, not during
    it. Returns seconds; 0 when compilation is off (nothing to warm up)."""
    if not (mle._compile_default() if compile is None else compile):
        return 0.0
    start = time.perf_counter()
    m = est.model
    t = np.tile(np.linspace(0.0, m.T, m.n_obs), (2, 1))
    ch = np.tile(np.arange(m.n_obs) % len(m.channels), (2, 1))
    for n in (1, 2):
        done = infer(est, t[:n], ch[:n], np.ones_like(t[:n]), compile=compile)
        if refine:  # a few iterations compile every graph a fit runs
            est.refine(t[:n], ch[:n], np.ones_like(t[:n]), done["z"], compile=compile, max_iter=3)
    return time.perf_counter() - start


def answer(est: Estimator, z: np.ndarray, nll: float, refined: bool, timing_ms: dict) -> dict:
    """One case's answer (SPEC 7): parameters by name in physical units, z, NLL."""
    m = est.model
    theta = m.from_z(z[None])[0]
    return {
        "parameters": {name: float(x) for name, x in zip(m.parameter_names, theta)},
        "units": dict(zip(m.parameter_names, m.parameter_units)),
        "z": [float(x) for x in z],
        "nll": float(nll) if math.isfinite(nll) else None,
        "refined": refined,
        "timing_ms": {k: round(float(x), 3) for k, x in timing_ms.items()},
        "checkpoint_id": est.checkpoint_id,
    }


def describe(est: Estimator) -> dict:
    m = est.model
    return {
        "name": m.name,
        "parameters": [{"name": n, "unit": u} for n, u in zip(m.parameter_names, m.parameter_units)],
        "channels": list(m.channels),
        "T": m.T,
        "n_obs": m.n_obs,
        "checkpoint_id": est.checkpoint_id,
    }
