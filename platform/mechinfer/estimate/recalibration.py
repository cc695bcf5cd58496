"""Interval widths recalibrated on simulated experiments, stored with a checkpoint.

Why: the Laplace approximation (:mod:`mechinfer.estimate.uncertainty`) is Gaussian in z.
Where the posterior is curved its tails are too thin: with the enzyme saturated, mmk's
Vmax-Km posterior is a banana, and the normal quantile's 95% intervals held Vmax 0.874
of the time on the SPEC test set (the core levels were right, the tails not).

The fix is split-conformal recalibration of the multiplier of the standard deviation
(the normal quantile n_L at level L) on a calibration set simulated from the prior (seed
:data:`SEED`, never the SPEC test set's or a training set's). Only the data's share of
the curvature needs correcting: the prior is exactly Gaussian in z, so a direction the
observations do not determine (sd = 1) is exactly N(0, 1) and keeps n_L, and with it the
prior's width. So the multiplier is q = n_L + (Q_L - n_L) w, with w = 1 - sd^2 the
data's share of the precision. With score s = |z_true - centre| / sd, the interval
covers the truth iff a = n_L + (s - n_L) / w <= Q_L, and Q_L is the ceil((n + 1) L)-th
smallest a of the calibration set: for experiments drawn as it was, the intervals then
hold the truth with probability at least L (marginally over the prior). Only cases with
w >= :data:`MIN_SHARE` enter (below it a is ill-conditioned and q hardly depends on Q_L);
a parameter with fewer than :data:`MIN_CASES` such cases keeps n_L. The network's
intervals and the refined ones have centres of their own, so each gets its own table.

Each kind has a second table made from the determined cases alone (the parameter's
variance in z at most :data:`~mechinfer.estimate.refine.DETERMINED_VARIANCE`, as
``determined`` in every answer says), which a determined parameter's interval takes
(Mondrian conformal prediction: the guarantee then holds within each category, not only
on average over both). Why: the pooled table mixes cases the data determine with cases
where the interval is nearly the prior's, and the errors of the two differ; on the five
PEtab problems' small runs, determined parameters' refined 95% intervals held the truth
as rarely as 0.80 (Bruno k5, 20 test cases) while the pooled coverage was 0.92. A
parameter with fewer than :data:`MIN_CASES` determined cases takes the table of the
determined cases of all parameters together (:func:`across_parameters`), and where
those are too few, its pooled table.

The tables live in ``calibration.json`` beside the checkpoint's weights, with the
checkpoint id they were made for; a checkpoint without one (or with a stale one) gets
the normal quantile.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import special

from .. import storage
from ..config import RECALIBRATION
from ..data.samples import simulate_chunk
from .refine import DETERMINED_VARIANCE
from .uncertainty import check_level

log = logging.getLogger(__name__)

FILE = "calibration.json"
SEED = 9_000_001  # the calibration set's: not the SPEC test set's (20231205), not a training seed
SAMPLES = RECALIBRATION[0]  # the stages' default (mechinfer.config)
MIN_SHARE = 0.19  # w = 1 - sd^2 >= 0.19: sd <= 0.9
MIN_CASES = 64
LEVELS = np.round(np.concatenate([np.arange(0.50, 0.99, 0.01), np.arange(0.990, 0.9995, 0.001)]), 3)


@dataclass(frozen=True)
class Recalibration:
    """Multipliers of the standard deviation in z, per level of :data:`LEVELS` and
    parameter, for network estimates and refined ones."""

    checkpoint_id: str
    samples: int
    levels: np.ndarray  # (L,)
    network: np.ndarray  # (L, P)
    refined: np.ndarray  # (L, P)
    # (L, P) from the determined cases alone; None (a file written before them): the pooled tables
    network_determined: np.ndarray | None = None
    refined_determined: np.ndarray | None = None

    def scale(self, level: float, sd: np.ndarray, refined) -> np.ndarray:
        """(B, P) multipliers at ``level`` of the standard deviations ``sd`` (B, P) of rows
        that were (``refined`` (B,) True) or were not refined; a determined parameter
        (sd^2 <= DETERMINED_VARIANCE) takes its kind's determined table. The tables are
        interpolated linearly between the tabulated levels."""
        level = check_level(level)
        n_l, network, refined_q, network_det, refined_det = self._at(level)
        kind = np.asarray(refined, bool)[:, None]
        sd = np.asarray(sd)
        q = np.where(
            np.square(sd) <= DETERMINED_VARIANCE,
            np.where(kind, refined_det, network_det),
            np.where(kind, refined_q, network),
        )
        return np.maximum(n_l + (q - n_l) * data_share(sd), 0.0)

    def _at(self, level: float) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The normal quantile and the four tables' (P,) rows at ``level``: worked out once
        per level (a served answer asks for them per case, nearly always at 0.95)."""
        cache = self.__dict__.setdefault("_rows", {})  # frozen dataclass: a plain attribute cache
        if level not in cache:
            pick = lambda table: np.array([np.interp(level, self.levels, col) for col in table.T])
            net, ref = pick(self.network), pick(self.refined)
            net_det = net if self.network_determined is None else pick(self.network_determined)
            ref_det = ref if self.refined_determined is None else pick(self.refined_determined)
            cache[level] = (float(special.ndtri(0.5 + 0.5 * level)), net, ref, net_det, ref_det)
        return cache[level]

    def as_dict(self) -> dict:
        tables = {
            name: np.round(getattr(self, name), 5).tolist()
            for name in ("network", "refined", "network_determined", "refined_determined")
            if getattr(self, name) is not None
        }
        return {
            "method": "split-conformal Q_L of n_L + (|z_true - centre| / sd - n_L) / (1 - sd^2) on prior draws; "
            f"the *_determined tables from the cases with sd^2 <= {DETERMINED_VARIANCE} alone",
            "checkpoint_id": self.checkpoint_id,
            "samples": self.samples,
            "seed": SEED,
            "levels": self.levels.tolist(),
            **tables,
        }


def data_share(sd: np.ndarray) -> np.ndarray:
    """w = 1 - sd^2: the data's share of the precision along a parameter (0: the prior's)."""
    return np.clip(1.0 - np.square(sd), 0.0, 1.0)


def conformal_table(
    center: np.ndarray,
    cov_z: np.ndarray,
    z_true: np.ndarray,
    levels=LEVELS,
    determined: bool = False,
    fallback: np.ndarray | None = None,
) -> np.ndarray:
    """(L, P): Q_L per level and parameter from the intervals' centres (B, P) and
    covariances (B, P, P) of experiments with parameters ``z_true`` (see the module
    docstring). ``determined``: from the cases whose variance is at most
    DETERMINED_VARIANCE alone. A parameter with fewer than MIN_CASES cases takes
    ``fallback``'s column (default the normal quantile)."""
    s, w, use = _scores(center, cov_z, z_true, determined)
    table = np.empty((len(levels), s.shape[1]))
    for i, level in enumerate(levels):
        n_l = special.ndtri(0.5 + 0.5 * level)
        for j in range(s.shape[1]):
            q = _quantile(n_l + (s[use[:, j], j] - n_l) / w[use[:, j], j], level)
            table[i, j] = q if q is not None else n_l if fallback is None else fallback[i, j]
    return table


def _scores(center, cov_z, z_true, determined: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, w, use), each (B, P): the scores |z_true - centre| / sd, the data's shares and
    the cases that enter a table (w >= MIN_SHARE, finite; ``determined``: those alone)."""
    sd = np.sqrt(np.clip(np.diagonal(cov_z, axis1=-2, axis2=-1), 1e-300, None))
    s, w = np.abs(z_true - center) / sd, data_share(sd)
    use = (w >= MIN_SHARE) & np.isfinite(s)
    if determined:
        use &= np.square(sd) <= DETERMINED_VARIANCE
    return s, w, use


def _quantile(a: np.ndarray, level: float) -> float | None:
    """The split-conformal quantile: the ceil((n + 1) L)-th smallest of n values; None
    for fewer than MIN_CASES."""
    if len(a) < MIN_CASES:
        return None
    return float(np.sort(a)[min(math.ceil((len(a) + 1) * level), len(a)) - 1])


def across_parameters(center, cov_z, z_true, levels=LEVELS, fallback: np.ndarray | None = None) -> np.ndarray:
    """(L, P): Q_L from the determined cases of every parameter together, the same value
    for each parameter; a level with fewer than MIN_CASES such cases in all takes
    ``fallback``'s row (default the normal quantile). The determined table's fallback for
    a parameter with too few determined cases of its own: its pooled table would mix in
    the cases the data do not determine, whose scores are smaller, and under-cover (Fujita,
    282 calibration experiments: reaction_2_k2's determined test cases held the truth 3 of
    8 times)."""
    s, w, use = _scores(center, cov_z, z_true, True)
    table = np.empty((len(levels), s.shape[1]))
    for i, level in enumerate(levels):
        n_l = special.ndtri(0.5 + 0.5 * level)
        q = _quantile(n_l + (s[use] - n_l) / w[use], level)
        table[i] = q if q is not None else n_l if fallback is None else fallback[i]
    return table


def conformal_tables(center: np.ndarray, cov_z: np.ndarray, z_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pooled table and the determined cases' (a parameter with too few determined
    cases of its own: the determined cases of all parameters together, else the pooled
    table)."""
    pooled = conformal_table(center, cov_z, z_true)
    across = across_parameters(center, cov_z, z_true, fallback=pooled)
    return pooled, conformal_table(center, cov_z, z_true, determined=True, fallback=across)


# The refined table's experiments are refined in chunks until all are or this many
# seconds have passed (the fits running then stop, and their experiments are left out):
# a refinement of a large PEtab problem's experiment from an early
# network's estimate can take seconds (Schwen: 19 conditions, 30 parameters, 286
# measurements), and 2048 of them would take hours of a pipeline that should take
# minutes. The built-in models refine all 2048 in well under it. The tables say how
# many experiments each used.
REFINE_BUDGET_S = 600.0
REFINE_CHUNK = 32


def recalibrate(
    est, samples: int = SAMPLES, seed: int = SEED, budget_s: float = REFINE_BUDGET_S, checkpoint: str | None = None
) -> Recalibration:
    """The tables for ``est`` (an Estimator) from ``samples`` simulated experiments; the
    refined one from as many of them as are refined within ``budget_s`` seconds
    (:data:`REFINE_BUDGET_S`). With ``checkpoint`` (where ``est`` was loaded from) and a
    connected Ray of more than one CPU, the refinements run as Ray tasks of
    :data:`REFINE_CHUNK` experiments, one per CPU at a time (the pipeline's train-inference
    stage: on 2 CPUs twice the experiments within the budget); otherwise here, a chunk
    after another."""
    rows = simulate_chunk(est.model, seed, 0, samples)
    ok = np.isfinite(rows["value"]).any(axis=1) & np.isfinite(rows["z"]).all(axis=1)
    t, ch, v, z = (rows[k][ok] for k in ("t", "channel", "value", "z"))
    res = est.infer(t, ch, v, refine=False)
    good = np.isfinite(res.nll)  # a failed solve has the prior's covariance, not the data's
    network, network_det = conformal_tables(res.center[good], res.cov_z[good], z[good])
    log.info("calibration of network intervals: %d of %d experiments", good.sum(), samples)
    deadline = time.time() + budget_s
    chunks = [slice(a, a + REFINE_CHUNK) for a in range(0, len(t), REFINE_CHUNK)]
    todo = [(t[c], ch[c], v[c], z[c]) for c in chunks]
    if checkpoint is not None and _ray_cpus() > 1:
        parts, reached = _in_ray_tasks(checkpoint, est.checkpoint_id, todo, deadline)
    else:
        parts, reached = _here(est, todo, deadline)
    if reached < len(t):
        log.warning(
            "calibration of refined intervals: time budget of %.0f s spent after %d of %d experiments",
            budget_s,
            reached,
            len(t),
        )
    if not parts:  # no experiment solved: the table keeps the normal quantile (conformal_table)
        n_p = z.shape[1]
        parts.append((np.empty((0, n_p)), np.empty((0, n_p, n_p)), np.empty(0), np.empty((0, n_p))))
    center, cov, nll, z_done = (np.concatenate(p) for p in zip(*parts))
    good = np.isfinite(nll)
    refined, refined_det = conformal_tables(center[good], cov[good], z_done[good])
    log.info("calibration of refined intervals: %d of %d experiments", good.sum(), samples)
    return Recalibration(est.checkpoint_id, len(nll), LEVELS.copy(), network, refined, network_det, refined_det)


Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # t, channel, value, z_true


def _refined(est, chunk: Chunk, deadline: float) -> Chunk:
    """centre, covariance, NLL and true z of a chunk's refined experiments; fits still
    running at ``deadline`` stop there and their experiments are left out."""
    t, ch, v, z = chunk
    part = est.infer(t, ch, v, refine=True, deadline=deadline)
    done = np.asarray(part.refine_status) != "deadline"
    return part.center[done], part.cov_z[done], part.nll[done], z[done]


def _here(est, chunks: list[Chunk], deadline: float) -> tuple[list[Chunk], int]:
    """The chunks one after another in this process until the deadline (the first always
    starts); the parts and the number of experiments of the chunks started."""
    from ..runtime import Progress

    parts: list[Chunk] = []
    reached = 0
    with Progress(sum(len(c[0]) for c in chunks), "calibration of refined intervals", "experiment") as progress:
        for chunk in chunks:
            if parts and time.time() > deadline:
                break
            parts.append(_refined(est, chunk, deadline))
            reached += len(chunk[0])
            progress.update(len(chunk[0]))
    return parts, reached


def _ray_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0


@functools.lru_cache(maxsize=2)
def _estimator(checkpoint: str, checkpoint_id: str):
    """The estimator at ``checkpoint``, loaded once per worker and weights (the id: a
    checkpoint rewritten at the same place is loaded again)."""
    from .estimator import load_estimator

    est = load_estimator(checkpoint)
    if est.checkpoint_id != checkpoint_id:
        raise ValueError(
            f"{checkpoint} now holds {est.checkpoint_id}, not {checkpoint_id}: it changed during the calibration"
        )
    return est


def _chunk_task(checkpoint: str, checkpoint_id: str, chunk: Chunk, deadline: float, first: bool) -> Chunk | None:
    """A Ray task: one chunk's refinements, or None when it would start past the deadline
    (the first chunk always starts)."""
    import torch

    torch.set_num_threads(1)
    if not first and time.time() > deadline:
        return None
    return _refined(_estimator(checkpoint, checkpoint_id), chunk, deadline)


def _in_ray_tasks(checkpoint: str, checkpoint_id: str, chunks: list[Chunk], deadline: float) -> tuple[list[Chunk], int]:
    """The chunks as Ray tasks (one CPU each); those that would start past the deadline
    return at once, with nothing."""
    import ray

    from ..runtime import Progress

    task = ray.remote(num_cpus=1, max_retries=3)(_chunk_task)
    log.info("calibration of refined intervals: %d Ray tasks of up to %d experiments", len(chunks), REFINE_CHUNK)
    pending = {task.remote(checkpoint, checkpoint_id, c, deadline, i == 0): len(c[0]) for i, c in enumerate(chunks)}
    parts: list[Chunk] = []
    reached = 0
    with Progress(sum(pending.values()), "calibration of refined intervals", "experiment") as progress:
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            size = pending.pop(ready)
            part = ray.get(ready)
            if part is not None:
                parts.append(part)
                reached += size
            progress.update(size)
    return parts, reached


def save(checkpoint: str, rec: Recalibration) -> str:
    """Write ``calibration.json`` into the checkpoint at ``checkpoint`` (temp, then renamed)."""
    location = f"{storage.absolute(checkpoint).rstrip('/')}/{FILE}"
    storage.write_json_to(location, rec.as_dict())
    return location


def load(checkpoint: str, checkpoint_id: str, n_parameters: int) -> Recalibration | None:
    """The tables stored with the checkpoint at ``checkpoint``; None where there are none
    or they were made for another checkpoint id (then with a warning: the weights changed
    after the calibration)."""
    fs, root = storage.resolve(checkpoint)
    try:
        data = storage.read_json(fs, f"{root.rstrip('/')}/{FILE}")
    except ValueError as exc:  # json's decode error is a ValueError
        raise ValueError(f"{checkpoint}/{FILE} is not readable JSON: {exc}") from None
    if data is None:
        return None
    if data.get("checkpoint_id") != checkpoint_id:
        log.warning(
            "%s/%s was made for %s, not %s: intervals use the normal quantile",
            checkpoint,
            FILE,
            data.get("checkpoint_id"),
            checkpoint_id,
        )
        return None
    try:
        levels, network, refined = (np.asarray(data[k], dtype=np.float64) for k in ("levels", "network", "refined"))
        # the determined cases' tables: absent from files written before them (the pooled ones serve)
        network_det, refined_det = (
            None if data.get(k) is None else np.asarray(data[k], dtype=np.float64)
            for k in ("network_determined", "refined_determined")
        )
        samples = int(data["samples"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{checkpoint}/{FILE} lacks its tables or holds non-numbers ({exc})") from None
    tables = [t for t in (network, refined, network_det, refined_det) if t is not None]
    if any(t.shape != (len(levels), n_parameters) for t in tables):
        raise ValueError(f"{checkpoint}/{FILE} does not hold ({len(levels)}, {n_parameters}) tables")
    if not (all(np.isfinite(t).all() for t in tables) and math.isclose(levels[0], 0.5)):
        raise ValueError(f"{checkpoint}/{FILE} holds non-finite multipliers or does not start at level 0.5")
    return Recalibration(checkpoint_id, samples, levels, network, refined, network_det, refined_det)


def calibrate_checkpoint(checkpoint: str, samples: int = SAMPLES) -> str:
    """Recalibrate the intervals of the inference checkpoint at ``checkpoint`` on
    ``samples`` simulated experiments and store the tables with it (what the
    train-inference stage does last); returns a line that says so."""
    from .estimator import load_estimator

    est = load_estimator(checkpoint)
    rec = recalibrate(est, samples, checkpoint=checkpoint)
    where = save(checkpoint, rec)
    at95 = rec.scale(0.95, np.zeros((1, est.model.n_parameters)), [True])[0]
    return (
        f"intervals recalibrated on {rec.samples} simulated experiments ({where}); 95% multipliers "
        f"of a well-determined refined parameter {np.min(at95):.3g}-{np.max(at95):.3g} (normal: 1.96)"
    )
