"""What the HTTP API (SPEC 7) does, without the web framework: checking observation
lists, running the network (and optionally the refinement) on a batch of them, and
shaping answers. The Ray Serve application in ``serving/app.py`` wraps these."""

from __future__ import annotations

import math
import re
import time

import numpy as np

from ..config import ServeArgs
from ..estimate import refine as stage
from ..estimate import uncertainty
from ..estimate.estimator import Estimator, log_scale, not_positive
from ..fit import mle
from ..models import likelihood

MAX_OBSERVATIONS = ServeArgs.model_fields["max_observations"].default  # unless configured otherwise
BOUND_STDS = 1000.0  # default value bounds: the training mean +- this many standard deviations


class BadRequest(ValueError):
    """The request names something that does not exist or breaks a limit (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def value_bounds(est: Estimator, configured: dict[str, tuple[float, float]] | None = None) -> np.ndarray:
    """(C, 2) bounds on each channel's observed values. By default the mean of the
    checkpoint's training values +- 1000 of their standard deviations: far wider than
    any plausible measurement, yet narrow enough that no value overflows the network's
    float32 input scaling (a value of 1e38 once turned a whole batch's answers into NaN).
    ``configured`` (channel name -> [low, high]) overrides channels by name.

    The bounds hold in the model's noise space (where the network reads values; for the
    built-in models the values themselves): a configured pair, in the model's units, is
    mapped there (a bound not above 0 on a log-scale channel becomes -inf)."""
    m = est.model
    offset = np.asarray(est.meta["network"]["value_offset"], dtype=np.float64)
    scale = np.asarray(est.meta["network"]["value_scale"], dtype=np.float64)
    bounds = np.stack([offset - BOUND_STDS * scale, offset + BOUND_STDS * scale], axis=1)
    for name, (low, high) in (configured or {}).items():
        if name not in m.channels:
            raise ValueError(f"value_bounds: unknown channel {name!r} for {m.name}; channels are {list(m.channels)}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"value_bounds for {m.name} channel {name!r} must be finite with low < high")
        c = m.channels.index(name)
        if m.observation is not None:
            low, high = np.nan_to_num(
                likelihood.to_noise_space(m, np.array([low, high]), np.array([c, c])), nan=-np.inf
            )
        bounds[c] = (low, high)
    return bounds


def observation_limit(model, configured: int = MAX_OBSERVATIONS) -> int:
    """Observations one set of ``model`` may hold: the configured limit, or a PEtab
    problem's number of measurements where that is more (its own measurements must be
    answerable: Schwen's are 286, the default limit 256)."""
    if model.observation is None:
        return configured
    return max(configured, len(model.observation.design_t))


def to_arrays(
    est: Estimator,
    observations: list[dict],
    max_observations: int = MAX_OBSERVATIONS,
    where: str = "observations",
    bounds: np.ndarray | None = None,
):
    """One observation list ({"t", "channel", "value"} dicts, channel by name) as
    (t, channel index, value) arrays of shape (N,); values outside ``bounds`` (see
    :func:`value_bounds`, the default) are refused."""
    m = est.model
    if bounds is None:
        bounds = value_bounds(est)
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
        c = m.channels.index(name)
        low, high = bounds[c]
        y = o["value"]
        if m.observation is not None:  # bounds in the noise space (see value_bounds)
            scale = log_scale(m, c)
            if scale is not None and not y > 0:
                raise BadRequest(f"{where}[{i}].{not_positive(name, y, scale)}")
            y = float(likelihood.to_noise_space(m, np.array([y], dtype=np.float64), np.array([c]))[0])
        if not low <= y <= high:
            if m.observation is not None:  # the message in the model's units
                low, high = (float(x) for x in m.observation.from_noise_space(np.array([low, high]), np.array([c, c])))
            raise BadRequest(
                f"{where}[{i}].value = {o['value']:g} is outside the bounds [{low:g}, {high:g}] of channel "
                f"{name!r} for {m.name} (value_bounds in the configuration)"
            )
        t[i], ch[i], v[i] = o["t"], c, o["value"]
    return t, ch, v


# a JSON string literal, as an unrolled loop (one alternation per character costs ~6x more)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")  # bytes.translate deletes them


def check_json_shape(raw: bytes, max_depth: int, max_number_chars: int) -> None:
    """Refuse (400) a body whose JSON nests deeper than ``max_depth`` or holds a number
    literal longer than ``max_number_chars``, before it is parsed: a parser's recursion
    or a 5000-digit integer's conversion is work a client must not be able to demand."""
    bare = _STRING.sub(b'""', raw)  # brackets and digits inside strings do not count
    long_number = re.search(rb"[-+0-9.eE]{%d,}" % (max_number_chars + 1), bare)
    if long_number:
        raise BadRequest(
            f"request body holds a number literal longer than {max_number_chars} characters "
            f"({long_number.group()[:16].decode()}...)",
            400,
        )
    brackets = np.frombuffer(bare.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    # depth after each bracket: +1 for [ and {, -1 for ] and } (in C, not per byte in Python)
    if len(brackets) and int(np.cumsum(np.where((brackets == 91) | (brackets == 123), 1, -1)).max()) > max_depth:
        raise BadRequest(f"request body nests JSON deeper than {max_depth} levels", 400)


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
    """Network estimates for padded (B, N) arrays (values in the model's units), with their
    NLL and Laplace
    approximation (one solve with sensitivities gives both; see
    :mod:`mechinfer.estimate.uncertainty`) and stage timings. ``error`` (B,) holds a
    message for each case that cannot be answered (the network's estimate is not finite,
    or the model cannot be solved there), else None: one such case never changes the
    others' answers (each row is its own problem). ``compile`` applies to the torch
    backend's steps only (a GPU, or MECHINFER_NATIVE=0)."""
    start = time.perf_counter()
    t, ch, y = est.observed(t, ch, v)  # values enter the model's noise space here, once
    z = est.network_z(t, ch, y)
    network = time.perf_counter()
    finite = np.isfinite(z).all(axis=1)
    p = z.shape[1]
    lap = {
        "center": np.where(finite[:, None], z, 0.0),
        "cov_z": np.broadcast_to(np.eye(p), (len(z), p, p)).copy(),
        "nll": np.full(len(z), np.nan),
        "gof_pvalue": np.full(len(z), np.nan),
    }
    if finite.any():
        at = uncertainty.laplace(est.model, t[finite], ch[finite], y[finite], z[finite], compile=compile)
        for name in lap:
            lap[name][finite] = getattr(at, name)
    error = [
        None
        if ok and np.isfinite(f)
        else "the network's estimate is not finite for these observations"
        if not ok
        else "the model cannot be solved at the network's estimate for these observations"
        for ok, f in zip(finite, lap["nll"])
    ]
    return {
        "z": z,
        **lap,
        "error": error,
        "timing_ms": {"network": 1e3 * (network - start), "nll_and_intervals": 1e3 * (time.perf_counter() - network)},
    }


def refine(
    est: Estimator,
    t,
    ch,
    v,
    z,
    compile: bool | None = None,
    deadline=None,
    method: str = stage.METHOD,
    starts: int = stage.REFINE_STARTS,
) -> dict:
    """A fit per case from the network's z by ``method`` (and from ``starts - 1`` draws
    around it: :func:`mechinfer.estimate.refine.posterior_starts`), and the maximum a posteriori
    point for its intervals (:func:`mechinfer.estimate.refine.polish`), each stopped at
    its ``deadline`` (wall-clock, see :func:`mechinfer.fit.mle.fit`): the rows that
    :func:`mechinfer.estimate.refine.combine` merges into the network's answers."""
    start = time.perf_counter()
    rows = est.polish(t, ch, v, z, compile=compile, deadline=deadline, method=method, starts=starts).rows()
    return {**rows, "timing_ms": {"refine": 1e3 * (time.perf_counter() - start)}}


def warm_up(est: Estimator, refine: bool, compile: bool | None = None, method: str = stage.METHOD) -> float:
    """Run :func:`infer` (and :func:`refine`) on made-up observation sets, so that a new
    replica loads (or compiles) its solver before its first request, not during it: batch
    1 for the native solver, batch 1 and 2 for compiled torch steps. Returns seconds; 0
    when there is nothing to prepare (torch steps, compilation off)."""
    native = mle.uses_native_solver()
    if not native and not (mle._compile_default() if compile is None else compile):
        return 0.0
    start = time.perf_counter()
    m = est.model
    t = np.tile(np.linspace(0.0, m.T, m.n_obs), (2, 1))
    ch = np.tile(np.arange(m.n_obs) % len(m.channels), (2, 1))
    for n in (1,) if native else (1, 2):
        done = infer(est, t[:n], ch[:n], np.ones_like(t[:n]), compile=compile)
        if refine:  # a few iterations compile every graph a fit runs
            est.refine(t[:n], ch[:n], np.ones_like(t[:n]), done["z"], compile=compile, max_iter=3, method=method)
    return time.perf_counter() - start


def answer(est: Estimator, case: dict, level: float, refine_status: str, timing_ms: dict) -> dict:
    """One case's answer (SPEC 7): parameters by name in physical units, z, their
    intervals at ``level``, which parameters the observations determine, NLL, goodness of
    fit, and whether (and how) it was refined. ``case`` holds one row of what
    :func:`infer` returns, combined with its refinement where there was one
    (:func:`mechinfer.estimate.refine.combine`: ``refined`` says whose answer it holds)."""
    m = est.model
    z = case["z"]
    theta = m.from_z(z[None])[0]
    refined = bool(case.get("refined", False))
    scale = est.interval_scale([refined])
    lower, upper = uncertainty.intervals(m, case["center"][None], case["cov_z"][None], level, scale)
    determined = stage.determined(case["cov_z"])
    gof = float(case["gof_pvalue"])
    return {
        "parameters": {name: float(x) for name, x in zip(m.parameter_names, theta)},
        "units": dict(zip(m.parameter_names, m.parameter_units)),
        "z": [float(x) for x in z],
        "intervals": {name: [float(lo), float(hi)] for name, lo, hi in zip(m.parameter_names, lower[0], upper[0])},
        "determined": {name: bool(d) for name, d in zip(m.parameter_names, determined)},
        "level": level,
        "gof_pvalue": gof if math.isfinite(gof) else None,
        "nll": float(case["nll"]) if math.isfinite(case["nll"]) else None,
        "refined": refined,
        "refine_status": refine_status,
        "timing_ms": {k: round(float(x), 3) for k, x in timing_ms.items()},
        "checkpoint_id": est.checkpoint_id,
    }


def describe(est: Estimator) -> dict:
    m = est.model
    return {
        "name": m.name,
        "parameters": [{"name": n, "unit": u} for n, u in zip(m.parameter_names, m.parameter_units)],
        "channels": list(m.channels),
        # a PEtab problem's conditions (channels <observable>@<condition> where there are several)
        "conditions": list(m.observation.conditions) if m.observation is not None else [],
        "T": m.T,
        "n_obs": m.n_obs,
        "checkpoint_id": est.checkpoint_id,
    }
