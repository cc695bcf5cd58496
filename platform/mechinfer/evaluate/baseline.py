"""The baselines of Table 1 over a test set, fanned out as Ray tasks (SPEC 6.5): BFGS, and
the trust region (``optimizers``), from prior draws and from the network's estimate.

Each task fits a chunk of test samples (CPU only, one thread), each method as a user
would run it: the ``max(starts)`` starts drawn from the prior of every sample as one
batched BFGS, then the one start from the network's estimate of every sample (Deep
Inference + BFGS) as another, so neither method's time depends on the other's problems
(they used to share one queue, where network starts rode in rounds of thousands of
prior starts and were charged a small share of each). Prior starts use textbook BFGS (H0 = I);
network starts begin with the Gauss-Newton inverse Hessian, which suits a start near
the optimum (on 64 mmk test samples it made prior starts slower and worse: 37.5 s vs
16.1 s, summed NLL 921 vs 553; network starts faster: 4.5 s vs 12.6 s). Each task writes
one Parquet file named by its first sample id, under a temporary name renamed when
complete, so a task retried after its worker died rewrites the same file and a sample is
never reported twice. The k-start results are the best of a sample's first k starts (starts depend on
(seed, sample_id) only), derived by the driver into ``multistart.parquet``; the manifest
is written last.

Time: each start's share of its own method's fit's wall-clock (every round of the batched
BFGS split evenly over the problems evaluated in it, the Gauss-Newton Jacobians of the
network starts included; the shares add up to the wall-clock), so the
k-start time of a sample is the sum over its first k starts. A start that is still
running when few others are left pays for nearly whole rounds: the tail of a batch is
charged to the slow starts that make it.

Without a checkpoint (a model from a file whose estimator is not trained yet) only the
prior starts run: the network rows are absent. An optimizer that does not apply to the
model is not run, and the manifest says why (``optimizers_skipped``): the trust region
where a PEtab problem's noise is Laplace (see :func:`mechinfer.fit.mle.method_for`).

The real data (SPEC 12): for the model of a PEtab problem, the problem's own measurements
(one observation set, values mapped to the noise space) are also fitted by BFGS from
``real_data_starts`` prior draws (stream ``(seed, REAL_DATA_ID)``), as Ray tasks of
``REAL_DATA_CHUNK`` starts each (one batched fit a task); each start's point, NLL, exact
PEtab log-likelihood (``problem.log_likelihood``), iterations, status and share of its
task's wall-clock go to ``real_data.parquet``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from .. import storage
from ..arrays import positive_int
from ..config import BaselineConfig
from ..data import format as ds_format
from ..data.samples import TEST_SEED, TEST_SIZE, simulate_chunk
from ..fit import mle
from ..machine import machine
from ..models import load_model
from ..models.base import Model
from ..models.sources import check_model
from ..runtime import Progress, ensure_ray
from ..solver import SolveStatus

INTENT = "_baseline.json"
OPTIMIZERS = BaselineConfig.optimizers
MULTISTART = "multistart.parquet"
PRIOR, NETWORK = "prior", "network"
REAL_DATA = "real_data.parquet"
REAL_DATA_STARTS = BaselineConfig.real_data_starts  # SPEC 12: 1 to at least 64 starts
REAL_DATA_CHUNK = 8  # real-data starts per Ray task (one batched fit)
REAL_DATA_ID = 2**31 - 1  # the real data's start stream (seed, REAL_DATA_ID): no test sample has this id
# Without a chunk_size, a test set is split into MIN_CHUNKS tasks of at most MAX_CHUNK
# samples. Why: with a fixed 256 a small test set (the small preset's 64 samples) was one
# task, fitted on one CPU while the others idled (Schwen's 64 samples x 8 starts x 2
# optimizers at 1-2 s a fit, half an hour alone). 1024 samples keep 4 tasks of 256.
MIN_CHUNKS, MAX_CHUNK = 4, 256
# ... and into BUDGETED_CHUNKS tasks under a time budget: a task started before the budget
# runs out is finished, so its size is what the budget may be overrun by.
BUDGETED_CHUNKS = 16


def petab_problem_of(model: Model):
    """The PEtab problem a model was loaded from (:func:`mechinfer.models.sources.petab_problem`),
    or None for any other model."""
    from ..models.sources import petab_problem

    if model.source is None or model.source.kind != "petab":
        return None
    return petab_problem(model)


def real_data(model: Model) -> dict | None:
    """The real measurements of a PEtab problem's model as one observation set: t, channel,
    value (1, N), values in the noise space (``likelihood.to_noise_space``); None for a
    model that is not a PEtab problem's."""
    from ..models import likelihood

    problem = petab_problem_of(model)
    if problem is None:
        return None
    meas = problem.measurements
    channel = np.array([model.channels.index(c) for c in meas["channel"]], dtype=np.int64)
    value = likelihood.to_noise_space(model, meas["value"].to_numpy(dtype=np.float64), channel)
    return {"t": meas["t"].to_numpy(dtype=np.float64)[None], "channel": channel[None], "value": value[None]}


def load_test_set(model: str | Model, test_set: str | None = None, limit: int | None = None) -> tuple[dict, dict]:
    """The rows to fit and a description of them, values and clean values in the model's
    noise space (``likelihood.to_noise_space``; the model's units for the built-in
    models). ``test_set``: a dataset location (SPEC 5) of the same model; default the SPEC
    test set (1024 samples, seed 20231205). ``limit`` keeps the first samples only (quick
    runs and tests)."""
    m = load_model(model)
    if test_set is None:
        n = TEST_SIZE if limit is None else min(positive_int("limit", limit), TEST_SIZE)
        rows = _to_noise_space(m, simulate_chunk(m, TEST_SEED, 0, n))
        return rows, {"source": "SPEC test set", "seed": TEST_SEED, "n_samples": n}
    manifest = storage.read_manifest(test_set, what="test set", model=m.name)
    check_model(m, manifest, f"test set {test_set}")
    table = ds_format.read_table(test_set)
    if limit is not None:
        table = table.slice(0, positive_int("limit", limit))
    rows = {
        "sample_id": table["sample_id"].to_numpy(),
        "theta": np.stack(table["theta"].to_numpy(zero_copy_only=False)),
        "status": table["status"].to_numpy(),
    }
    for name in ("t", "channel", "value", "clean"):
        rows[name] = _padded(table[name], np.int64 if name == "channel" else np.float64)
    return _to_noise_space(m, rows), {"source": test_set, "seed": manifest["seed"], "n_samples": len(rows["sample_id"])}


def _to_noise_space(m: Model, rows: dict) -> dict:
    """Dataset rows (values in the model's units, SPEC 5) with value and clean mapped to
    the noise space, where the fits and metrics take them."""
    if m.observation is None:
        return rows
    from ..models import likelihood

    return {
        **rows,
        "value": likelihood.to_noise_space(m, rows["value"], rows["channel"]),
        "clean": likelihood.to_noise_space(m, rows["clean"], rows["channel"]),
    }


def _padded(column, dtype) -> np.ndarray:
    lists = column.to_pylist()
    width = max(len(v) for v in lists)
    fill = 0 if dtype is np.int64 else np.nan
    return np.array([v + [fill] * (width - len(v)) for v in lists], dtype=dtype)


def fit_prior_starts(m, t, ch, value, z0: np.ndarray, max_iter: int, optimizer: str = "bfgs") -> mle.Fit:
    """k starts drawn from the prior: z0 (B, k, P), the k starts of every set as one
    batched fit, by ``optimizer`` (BFGS: textbook, H0 = I); the fit's rows are sample-major."""
    k = z0.shape[1]
    rep = lambda a: np.repeat(a, k, axis=0)
    z0 = z0.reshape(-1, z0.shape[2])
    return mle.fit(m, rep(t), rep(ch), rep(value), z0, max_iter=max_iter, hessian="identity", method=optimizer)


def fit_network_starts(m, t, ch, value, z0: np.ndarray, max_iter: int, optimizer: str = "bfgs") -> mle.Fit:
    """Deep Inference + ``optimizer``: one start per set from the network's estimate z0
    (B, P) (BFGS with the Gauss-Newton initial inverse Hessian)."""
    return mle.fit(m, t, ch, value, z0, max_iter=max_iter, hessian="gauss-newton", method=optimizer)


def fit_chunk(
    model: str | Model,
    rows: dict,
    checkpoint: str,
    n_starts: int,
    seed: int,
    max_iter: int,
    optimizers: tuple[str, ...] = OPTIMIZERS,
) -> pa.Table:
    """The fits of a chunk of test rows, each method as a user would run it, per
    optimizer: the ``n_starts`` prior starts of every sample as one batched fit, then the
    network starts of every sample as another (Deep Inference + the optimizer run alone:
    its Gauss-Newton starts inside its own time). One table row per (optimizer, sample,
    start)."""
    from ..estimate.estimator import load_estimator

    m = load_model(model)
    ids, t, ch, value = rows["sample_id"], rows["t"], rows["channel"], rows["value"]
    n, p = len(ids), m.n_parameters
    est = None if checkpoint is None else load_estimator(checkpoint)
    rep = lambda a: np.repeat(a, n_starts, axis=0)
    prior_z0 = mle.prior_starts(m, ids, n_starts, seed)
    tables = []
    for optimizer in optimizers:
        prior = fit_prior_starts(m, t, ch, value, prior_z0, max_iter, optimizer)
        if est is None:  # no network yet: the prior starts alone
            cols = {
                "optimizer": np.full(n * n_starts, optimizer),
                "sample_id": rep(ids).astype(np.int64),
                "method": np.full(n * n_starts, PRIOR),
                "start": np.tile(np.arange(n_starts), n).astype(np.int16),
                "z0": prior_z0.reshape(-1, p),
            }
            for name in ("z", "theta", "nll", "iterations", "evaluations", "status", "seconds"):
                cols[name] = getattr(prior, name)
            cols["iterations"] = cols["iterations"].astype(np.int32)
            cols["evaluations"] = cols["evaluations"].astype(np.int32)
            cols["problems"] = np.full(n * n_starts, n * n_starts, dtype=np.int32)
            cols["fit_wall_s"] = np.full(n * n_starts, prior.wall_s)
            tables.append(_fits_table(cols, None))
            continue
        net_z0 = est.network_z(t, ch, value)  # rows in the noise space already
        network = fit_network_starts(m, t, ch, value, net_z0, max_iter, optimizer)
        cols = {
            "optimizer": np.full(n * n_starts + n, optimizer),
            "sample_id": np.r_[rep(ids), ids].astype(np.int64),
            "method": np.r_[np.full(n * n_starts, PRIOR), np.full(n, NETWORK)],
            "start": np.r_[np.tile(np.arange(n_starts), n), np.zeros(n, dtype=int)].astype(np.int16),
            "z0": np.concatenate([prior_z0.reshape(-1, p), net_z0]),  # sample-major, as the fit's rows
        }
        for name in ("z", "theta", "nll", "iterations", "evaluations", "status", "seconds"):
            cols[name] = np.concatenate([getattr(prior, name), getattr(network, name)])
        cols["iterations"] = cols["iterations"].astype(np.int32)
        cols["evaluations"] = cols["evaluations"].astype(np.int32)
        cols["problems"] = np.r_[np.full(n * n_starts, n * n_starts), np.full(n, n)].astype(np.int32)
        cols["fit_wall_s"] = np.r_[np.full(n * n_starts, prior.wall_s), np.full(n, network.wall_s)]
        tables.append(_fits_table(cols, est.checkpoint_id))
    return pa.concat_tables(tables)


def _fits_table(cols: dict, checkpoint_id: str | None) -> pa.Table:
    fixed = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float64()), a.shape[1])
    arrays = {k: fixed(v) if k in ("z0", "z", "theta") else pa.array(v) for k, v in cols.items()}
    arrays["checkpoint_id"] = pa.array([checkpoint_id] * len(cols["sample_id"]), pa.string())
    return pa.table(arrays)


def fit_real_data(model: str | Model, first: int, last: int, n_starts: int, seed: int, max_iter: int) -> pa.Table:
    """Real-data starts ``first:last`` of ``n_starts`` (drawn from the prior, stream
    ``(seed, REAL_DATA_ID)``: start k is the same whatever the chunking) as one batched
    BFGS fit (H0 = I, as the test set's prior starts) of the problem's measurements; one
    row per start with its exact PEtab log-likelihood."""
    m = load_model(model)
    data = real_data(m)
    problem = petab_problem_of(m)
    if data is None or problem is None:
        raise ValueError(f"model {m.name!r} is not a PEtab problem's: it has no real data")
    z0 = mle.prior_starts(m, [REAL_DATA_ID], n_starts, seed)[:, first:last]
    fit = fit_prior_starts(m, data["t"], data["channel"], data["value"], z0, max_iter, "bfgs")
    n = last - first
    fixed = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float64()), a.shape[1])
    return pa.table(
        {
            "start": pa.array(np.arange(first, last, dtype=np.int32)),
            "optimizer": pa.array([fit.method] * n),
            "space": pa.array([fit.space] * n),
            "z0": fixed(z0[0]),
            "z": fixed(fit.z),
            "theta": fixed(fit.theta),
            "nll": pa.array(fit.nll),
            "log_likelihood": pa.array(np.asarray(problem.log_likelihood(fit.theta), dtype=np.float64)),
            "iterations": pa.array(fit.iterations.astype(np.int32)),
            "evaluations": pa.array(fit.evaluations.astype(np.int32)),
            "status": pa.array(fit.status.astype(np.int8)),
            "seconds": pa.array(fit.seconds),
            "problems": pa.array(np.full(n, n, dtype=np.int32)),
            "fit_wall_s": pa.array(np.full(n, fit.wall_s)),
        }
    )


def _run_real_data(model, first, last, n_starts, seed, max_iter) -> pa.Table:
    torch.set_num_threads(1)  # one task per CPU
    data = real_data(load_model(model))
    assert data is not None
    mle.warm_up(load_model(model), data["t"], data["channel"], data["value"])
    return fit_real_data(model, first, last, n_starts, seed, max_iter)


def _run_chunk(model, rows, checkpoint, n_starts, seed, max_iter, optimizers, root_uri, deadline=None) -> dict:
    """Fit one chunk and write its part; past ``deadline`` (seconds since the epoch) do
    nothing and say so (the budget of :func:`run_baseline`)."""
    if deadline is not None and time.time() > deadline:
        return {"first": int(rows["sample_id"][0]), "samples": 0, "skipped": len(rows["sample_id"])}
    torch.set_num_threads(1)  # one task per CPU
    warm = mle.warm_up(load_model(model), rows["t"], rows["channel"], rows["value"])
    start = time.perf_counter()
    table = fit_chunk(model, rows, checkpoint, n_starts, seed, max_iter, optimizers)
    fs, root = storage.resolve(root_uri)
    first = int(rows["sample_id"][0])
    ds_format.write_part(fs, root, first, table)
    return {
        "first": first,
        "samples": len(rows["sample_id"]),
        "fit_s": round(time.perf_counter() - start, 3),
        "compile_warm_up_s": round(warm, 3),
    }


@dataclass
class BaselineSummary:
    model: str
    location: str
    samples: int
    starts: list[int]
    chunks: int
    chunks_resumed: int
    wall_s: float
    table: str  # the k-start results, per sample
    optimizers: list[str] = field(default_factory=lambda: ["bfgs"])
    skipped: int = 0  # test samples left out: their tasks would have started past the budget

    def __str__(self) -> str:
        left_out = f" ({self.skipped} left out past the time budget)" if self.skipped else ""
        return (
            f"Baselines ({', '.join(self.optimizers)}) for {self.samples} {self.model} samples{left_out}, "
            f"starts {self.starts} + network start, "
            f"{self.chunks} chunks ({self.chunks_resumed} resumed), {self.wall_s:.1f} s wall -> {self.table}"
        )


def run_baseline(
    model: str | Model,
    out: str,
    *,
    checkpoint: str | None = None,
    test_set: str | None = None,
    limit: int | None = BaselineConfig.limit,
    starts=BaselineConfig.starts,
    seed: int = BaselineConfig.seed,
    chunk_size: int | None = BaselineConfig.chunk_size,
    max_iter: int = BaselineConfig.max_iter,
    optimizers=BaselineConfig.optimizers,
    overwrite: bool = False,
    command: str = "",
    real_data_starts: int = REAL_DATA_STARTS,
    budget_s: float | None = BaselineConfig.budget_s,
) -> BaselineSummary:
    """Fit every test sample from ``max(starts)`` prior starts and from the network's
    estimate, as Ray tasks of ``chunk_size`` samples (None: MIN_CHUNKS tasks of at most
    MAX_CHUNK, BUDGETED_CHUNKS with a budget; starts an embedded Ray when none is
    connected); write the per-start fits, the per-sample k-start table and a manifest
    into ``out``. Resumes an unfinished run with the same settings. For a model from a
    file, ``checkpoint`` None runs the prior starts only. For a PEtab problem's model,
    also ``real_data_starts`` BFGS starts on the problem's measurements (SPEC 12;
    ``real_data.parquet``, refitted on every run). With ``budget_s``, a test-set task
    that would start more than that many seconds after this run began fits nothing (the
    first always runs): its samples are left out of the results and counted
    (``samples_skipped``); the result is complete (a run killed before its end resumes
    with a budget counted from the rerun's start)."""
    import ray

    from ..estimate.estimator import load_estimator

    m = load_model(model)
    starts = sorted({positive_int("starts", k) for k in (starts if not isinstance(starts, int) else [starts])})
    if not starts:
        raise ValueError("starts must name at least one number of starts")
    if chunk_size is not None:
        chunk_size = positive_int("chunk_size", chunk_size)
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, int | float) or budget_s <= 0):
        raise ValueError(f"budget_s must be a positive number of seconds or None, got {budget_s!r}")
    max_iter = positive_int("max_iter", max_iter)
    optimizers = tuple(dict.fromkeys([optimizers] if isinstance(optimizers, str) else optimizers))
    unknown = sorted(set(optimizers) - set(mle.METHODS)) or ([] if optimizers else ["(none)"])
    if unknown:
        raise ValueError(f"optimizers must name some of {list(mle.METHODS)}, got {unknown}")
    skipped = {o: f"does not apply to {m.name} (see mechinfer.fit.mle.method_for)" for o in optimizers}
    optimizers = tuple(o for o in optimizers if mle.method_for(m, o) == o)
    skipped = {o: why for o, why in skipped.items() if o not in optimizers}
    if not optimizers:
        optimizers = ("bfgs",)
    problem = petab_problem_of(m)
    real_starts = positive_int("real_data_starts", real_data_starts) if problem is not None else 0
    if checkpoint is None and m.source is None:
        checkpoint = m.name  # the shipped checkpoint
    est = None  # a model from a file without a checkpoint: prior starts only
    if checkpoint is not None:
        est = load_estimator(checkpoint)  # fails early on a missing checkpoint or another model's
        check_model(m, est.meta, f"checkpoint {checkpoint}")
    rows, described = load_test_set(m, test_set, limit)
    usable = rows["status"] == SolveStatus.OK
    rows = {k: v[usable] for k, v in rows.items()}
    n = len(rows["sample_id"])
    if chunk_size is None:
        chunk_size = max(1, min(MAX_CHUNK, -(-n // (MIN_CHUNKS if budget_s is None else BUDGETED_CHUNKS))))
    fs, root = storage.resolve(out)
    params = {
        "model": m.name,
        **({"model_hash": m.source_hash} if m.source is not None else {}),  # a model file's version
        "checkpoint_id": None if est is None else est.checkpoint_id,
        "test_set": described,
        "starts": starts,
        "seed": int(seed),
        "chunk_size": chunk_size,
        "max_iter": max_iter,
        "optimizers": list(optimizers),
        **({"real_data_starts": real_starts} if real_starts else {}),
        **({"budget_s": float(budget_s)} if budget_s is not None else {}),
    }
    with storage.lock(out, "baseline"):  # one writer at a time; before anything is deleted
        done = ds_format.prepare_location(
            fs, root, out, params, overwrite, intent=INTENT, outputs=(MULTISTART, REAL_DATA), what="baseline"
        )
        chunks = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
        todo = [(a, b) for a, b in chunks if ds_format.part_name(int(rows["sample_id"][a])) not in done]
        start = time.perf_counter()
        deadline = None if budget_s is None else time.time() + budget_s
        real_pending = []
        if real_starts:  # first: a handful of tasks the test set's chunks then queue behind
            ensure_ray()
            real_task = ray.remote(num_cpus=1, num_gpus=0, max_retries=3)(_run_real_data)
            real_pending = [
                real_task.remote(m, a, min(a + REAL_DATA_CHUNK, real_starts), real_starts, seed, max_iter)
                for a in range(0, real_starts, REAL_DATA_CHUNK)
            ]
        if todo:
            ensure_ray()
            task = ray.remote(num_cpus=1, num_gpus=0, max_retries=3)(_run_chunk)
            ckpt = None if checkpoint is None else checkpoint if checkpoint == m.name else storage.absolute(checkpoint)
            root_uri = storage.absolute(out)
            pending = [
                task.remote(
                    m,
                    {k: v[a:b] for k, v in rows.items()},
                    ckpt,
                    starts[-1],
                    seed,
                    max_iter,
                    optimizers,
                    root_uri,
                    deadline if i else None,  # the first task always fits: a result has samples
                )
                for i, (a, b) in enumerate(todo)
            ]
            chunk_times = _wait_with_progress(pending, f"baseline {m.name}")
        else:
            chunk_times = []
        left_out = sum(r.get("skipped", 0) for r in chunk_times)
        chunk_times = [r for r in chunk_times if not r.get("skipped")]
        written = {path.rsplit("/", 1)[-1] for path in ds_format.list_parts(fs, root)}
        ids = rows["sample_id"]
        fitted = np.concatenate(
            [ids[a:b] for a, b in chunks if ds_format.part_name(int(ids[a])) in written] or [ids[:0]]
        )
        real_summary = None
        if real_pending:
            real = pa.concat_tables(ray.get(real_pending)).sort_by("start")
            storage.write_file(fs, f"{root}/{REAL_DATA}", lambda f: pq.write_table(real, f))
            real_summary = {
                "file": REAL_DATA,
                "starts": real_starts,
                "starts_per_task": REAL_DATA_CHUNK,
                "optimizer": "bfgs",
                "n_measurements": int(np.isfinite(real_data(m)["value"]).sum()),  # type: ignore[index]
                "reference_log_likelihood": float(problem.log_likelihood()),  # type: ignore[union-attr]
                "best_log_likelihood": float(np.nanmax(real["log_likelihood"].to_numpy(zero_copy_only=False))),
                "solver_tolerances": mle.fit_tolerances(m),
            }
        fits = _read_fits(fs, root, out, fitted, starts[-1], optimizers, network=est is not None)
        table = multistart_table(fits, starts)
        storage.write_file(fs, f"{root}/{MULTISTART}", lambda f: pq.write_table(table, f))
        wall = time.perf_counter() - start
        manifest = ds_format.make_manifest(
            m,
            len(fitted),
            seed,
            {
                **params,
                "kind": "baseline",
                "samples_skipped": int(left_out),
                "command": command,
                "machine": machine(),
                "threads_per_task": 1,
                "wall_s": round(wall, 3),
                "excluded_failed_rows": int((~usable).sum()),
                "chunk_times": chunk_times,  # this run's chunks (resumed ones are not repeated)
                "network_starts": est is not None,
                "optimizers_skipped": skipped,
                "solver_tolerances": mle.fit_tolerances(m),
                **({"real_data": real_summary} if real_summary else {}),
            },
        )
        storage.write_json(fs, f"{root}/{storage.MANIFEST}", manifest)
        fs.delete_file(f"{root}/{INTENT}")
        return BaselineSummary(
            m.name,
            out,
            len(fitted),
            starts,
            len(chunks),
            len(chunks) - len(todo),
            wall,
            f"{out.rstrip('/')}/{MULTISTART}",
            list(optimizers),
            int(left_out),
        )


def _wait_with_progress(pending, what: str) -> list:
    import ray

    results = []
    with Progress(len(pending), what, "chunk") as progress:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results += ray.get(ready)  # raises the task's error, if it failed for good
            progress.update(len(ready))
    return sorted(results, key=lambda r: r["first"])


def _read_fits(
    fs, root: str, out: str, sample_ids: np.ndarray, n_starts: int, optimizers, network: bool = True
) -> pa.Table:
    """All per-start fits, checked: every sample once per start and (``network``) once
    from the network, for every optimizer."""
    table = pads.dataset(ds_format.list_parts(fs, root), filesystem=fs, format="parquet").to_table()
    optimizer = table["optimizer"].to_numpy(zero_copy_only=False)
    method = table["method"].to_numpy(zero_copy_only=False)
    ids = table["sample_id"].to_numpy()
    for opt in optimizers:
        for kind, per_sample in ((PRIOR, n_starts), (NETWORK, 1))[: 2 if network else 1]:
            got = np.sort(ids[(optimizer == opt) & (method == kind)])
            want = np.sort(np.repeat(sample_ids, per_sample))
            if not np.array_equal(got, want):
                raise RuntimeError(
                    f"{out}: {opt} {kind} fits do not cover every sample exactly {per_sample} time(s); "
                    "result left incomplete"
                )
    order = [("optimizer", "ascending"), ("sample_id", "ascending"), ("method", "descending"), ("start", "ascending")]
    return table.sort_by(order)


def multistart_table(fits: pa.Table, starts: list[int]) -> pa.Table:
    """Per optimizer, sample and number of starts k: the best of its first k prior
    starts, with the summed cost; plus one row per sample for the network start
    (``starts`` = 0). ``fits`` sorted as :func:`_read_fits` sorts them."""
    tables = []
    optimizer = fits["optimizer"].to_numpy(zero_copy_only=False)
    for opt in dict.fromkeys(optimizer.tolist()):
        table = _multistart(fits.filter(pa.array(optimizer == opt)), starts)
        tables.append(table.add_column(0, "optimizer", pa.array([opt] * table.num_rows)))
    return pa.concat_tables(tables)


def _multistart(fits: pa.Table, starts: list[int]) -> pa.Table:
    """:func:`multistart_table` for the fits of one optimizer."""
    f = {
        c: fits[c].to_numpy(zero_copy_only=False)
        for c in ("sample_id", "method", "start", "nll", "iterations", "evaluations", "seconds")
    }
    theta = np.stack(fits["theta"].to_numpy(zero_copy_only=False))
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("sample_id", "method", "starts", "best_start", "nll", "iterations", "evaluations", "seconds")
    }
    thetas: list[np.ndarray] = []
    prior = f["method"] == PRIOR
    ids = np.unique(f["sample_id"])
    for k in starts:
        rows = np.flatnonzero(prior & (f["start"] < k)).reshape(len(ids), k)  # sorted by sample, then start
        nll = np.where(np.isfinite(f["nll"][rows]), f["nll"][rows], np.inf)
        best = rows[np.arange(len(ids)), nll.argmin(1)]
        _append(out, thetas, f, theta, best, PRIOR, k, f["start"][best], rows)
    net_rows = np.flatnonzero(~prior)
    if len(net_rows):
        _append(out, thetas, f, theta, net_rows, NETWORK, 0, np.zeros(len(net_rows), dtype=np.int64), net_rows[:, None])
    cols = {k: np.concatenate(v) for k, v in out.items()}
    table = pa.table({k: pa.array(v) for k, v in cols.items()})
    theta_all = np.concatenate(thetas)
    return table.append_column(
        "theta", pa.FixedSizeListArray.from_arrays(pa.array(theta_all.reshape(-1)), theta_all.shape[1])
    )


def _append(out, thetas, f, theta, best, method, k, best_start, group):
    out["sample_id"].append(f["sample_id"][best])
    out["method"].append(np.full(len(best), method))
    out["starts"].append(np.full(len(best), k, dtype=np.int16))
    out["best_start"].append(np.asarray(best_start, dtype=np.int16))
    out["nll"].append(f["nll"][best])
    for c in ("iterations", "evaluations", "seconds"):
        out[c].append(f[c][group].sum(1))
    thetas.append(theta[best])
