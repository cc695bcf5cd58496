"""Bulk estimation (SPEC 10): every experiment of a long table, with Ray Data end to end.

``mechinfer estimate --model ecoli --input obs.parquet --output est/`` reads a long
table (Parquet or CSV, a file or a directory of them, at a local path or a pyarrow
filesystem URI; columns ``experiment``, ``t``, ``channel``, ``value``) and writes one
row per experiment: the estimate of every parameter, its interval at ``level``, the NLL,
the goodness of fit, the refinement status, the number of observations and ``error``
(null when the experiment was estimated). The stages:

1. **read and fold** (Ray Data read tasks + ``map_batches``): each block becomes one row
   per experiment present in it, holding that experiment's observations as lists
   (:func:`_fold`). The folded dataset is materialized before anything is written, so
   an unreadable file, a missing column or a column of the wrong type stops the job
   with one line and the output location untouched.
2. **parts**: the driver collects the distinct experiment ids (one small column of
   the folded rows), sorts them and cuts them into parts of ``chunk_size`` experiments;
   part ``i`` holds the ids ranked ``i * chunk_size`` onwards and is written as
   ``part-<i * chunk_size>.parquet``. The parts depend on the ids alone (never on the
   blocks or the workers), so a rerun finds the same parts, and the output lists the
   experiments sorted by id.
3. **group** (``groupby(part).map_groups``): the folded rows of each unfinished part
   meet in one place and become the part's NaN-padded arrays and per-experiment errors
   (:func:`mechinfer.estimate.frame.group_codes`, the code of
   :func:`mechinfer.observations_from_frame`).
4. **network and intervals** (``map_batches`` with the actor class :class:`_Estimator`
   on an ``ActorPoolStrategy`` of ``actors`` actors, one CPU and one torch thread
   each): each actor loads the estimator once and runs :meth:`Estimator.infer` on
   batches of ``batch_size`` experiments. With ``--refine never`` the actor writes
   the part (nothing follows it, so the pool may take every CPU).
5. **refine and write** (``map_batches`` tasks, :func:`_finish`, one per part): the
   experiments that need it (``--refine always``: all; ``auto``: those whose network
   estimate has a ``gof_pvalue`` below ``auto_pvalue``, or none) are refined by Ray
   tasks of ``refine_batch`` experiments (:func:`_refine_rows`: ``Estimator.polish``
   from the network's estimate, combined as ``Estimator.infer`` combines it), then the
   part is written. The pool leaves one CPU to these tasks while it runs.
6. the driver checks that every experiment is in the output exactly once, then writes
   ``manifest.json``, last.

Every part is written under a temporary name and renamed when complete. Resume and
overwrite follow the datasets' rules (SPEC 5, :mod:`mechinfer.data.format`): parts of
an unfinished run with the same settings and the same input (its files' names, sizes
and modification times) are kept and skipped, a complete output is refused unless
``overwrite``. A worker that dies mid-part (Ray Data restarts an estimator actor and
retries its batch; tasks are retried) rewrites the same part file, so an experiment is
never written twice.

Why this grouping (bench/bulk_grouping.py, bench/results/bulk_grouping_cpu.txt: 100,000
E. coli experiments, 3M rows, 2 cores, warm workers): folding first and grouping by part
took 4.6 s (read and fold 3.0 s, distinct ids 0.2 s, group 1.4 s); grouping the raw rows
by part 9.6 s (read 5.5 s, ids 2.6 s, group 1.5 s), as the folded rows are 30 times
fewer to move and to collect ids from. Ray Data's default hash shuffle took 9.5 s for
the same grouping against 1.4 s for the sort-based one used here: its aggregators are
actors, new processes that import torch to run the grouping. ``groupby("experiment")
.map_groups``, one Python call per experiment, took 11.7 s before any packing. The
network stage dominates: 100,000 experiments in 67 s on two actors, 88 s for the whole
job (bench/results/bulk_estimate_cpu.txt).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pickle
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from ray.data.context import ShuffleStrategy

from .. import SPEC_VERSION, __version__, storage
from ..arrays import positive_int
from ..config import EstimateConfig
from ..data import format as ds_format
from ..machine import machine
from ..models import load_model
from ..models.base import Model
from ..models.sources import check_model
from ..runtime import ensure_ray
from . import frame
from . import refine as stage
from .estimator import Estimator, load_estimator
from .uncertainty import check_level, intervals

log = logging.getLogger(__name__)

INTENT = "_estimate.json"
SHUFFLE = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED  # why: see the module docstring
CSV_TYPES = {"experiment": pa.string(), "t": pa.string(), "channel": pa.string(), "value": pa.string()}


# ----------------------------------------------------------------------- input
@dataclass
class Input:
    """The files of an input location, checked: one format, readable, the columns there."""

    location: str
    format: str  # "parquet" or "csv"
    fs: pafs.FileSystem
    paths: list[str]
    fingerprint: str  # of the paths, sizes and modification times: a changed input is a new input

    def read(self):
        """The Ray Data dataset of the four columns."""
        import ray

        if self.format == "parquet":
            return ray.data.read_parquet(self.paths, filesystem=self.fs, columns=list(frame.COLUMNS))
        return ray.data.read_csv(
            self.paths,
            filesystem=self.fs,
            convert_options=pacsv.ConvertOptions(
                column_types=CSV_TYPES, include_columns=list(frame.COLUMNS), strings_can_be_null=True
            ),
        )


def _format_of(name: str) -> str | None:
    name = name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    return None


def open_input(location: str) -> Input:
    """The input's files (a file, or every Parquet or CSV file under a directory; names
    starting with ``_`` or ``.`` are left out, as Spark and Ray leave them), each checked
    for the columns (Parquet footers, CSV headers); ValueError with one line otherwise."""
    fs, path = storage.resolve(location)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ValueError(f"cannot read input {location}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            infos = [
                i
                for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                if i.type == pafs.FileType.File
                and not any(p.startswith(("_", ".")) for p in i.path[len(path) :].split("/") if p)
            ]
        else:
            infos = [info]
    except OSError as exc:
        raise ValueError(f"cannot read input {location}: {exc}") from None
    formats = {_format_of(i.base_name) for i in infos}
    if not infos or None in formats or len(formats) > 1:
        found = sorted(i.base_name for i in infos)[:5]
        raise ValueError(
            f"input {location} must be a Parquet or CSV file (.parquet, .csv) or a directory of one kind of them; "
            f"found {', '.join(found) if found else 'no files'}"
        )
    kind = formats.pop() or "parquet"  # one known format, checked above
    infos.sort(key=lambda i: i.path)
    id_kinds: dict[str, str] = {}
    for i in infos:
        try:
            schema = _schema(fs, i.path, kind)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"cannot read input {i.path}: {_first_line(exc)}") from None
        try:
            frame.check_columns(schema.names)
        except ValueError as exc:
            raise ValueError(f"input {i.path}: {exc}") from None
        id_kinds.setdefault(_id_kind(schema.field("experiment").type, i.path), i.path)
    if len(id_kinds) > 1:
        (a, path_a), (b, path_b) = sorted(id_kinds.items())[:2]
        raise ValueError(f"experiment ids are {a} in {path_a} but {b} in {path_b}; give them one type")
    listing = [[i.path, i.size, i.mtime_ns] for i in infos]
    return Input(
        location=storage.absolute(location),
        format=kind,
        fs=fs,
        paths=[i.path for i in infos],
        fingerprint=hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16],
    )


def _schema(fs: pafs.FileSystem, path: str, kind: str) -> pa.Schema:
    if kind == "parquet":
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    compression = "gzip" if path.endswith(".gz") else None
    with fs.open_input_stream(path, compression=compression) as f:
        return pacsv.open_csv(f, convert_options=pacsv.ConvertOptions(column_types=CSV_TYPES)).schema


def _id_kind(typ: pa.DataType, path: str) -> str:
    """'integers' or 'text': what the experiment column of a file holds."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_integer(typ):
        return "integers"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "text"
    raise ValueError(f"input {path}: the experiment column must hold strings or integers, not {typ}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------ Ray Data stages
def _fold(block: pa.Table, model: str | Model) -> pa.Table:
    """Stage 1: a block of rows -> one row per experiment in it, its observations as lists
    (t, value float64; channel int16 index, frame.UNKNOWN or frame.MISSING) and the first
    unknown channel name among them (for the error message)."""
    m = load_model(model)
    table = frame.canonical(block.select(list(frame.COLUMNS)))
    ids, codes = frame._codes(table["experiment"], sort=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(ids))
    offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
    names = table["channel"].combine_chunks()
    channel = frame.channel_indices(names, m)
    unknown: list[str | None] = [None] * len(ids)
    for row in np.flatnonzero(channel == frame.UNKNOWN).tolist():
        e = int(codes[row])
        if unknown[e] is None:
            unknown[e] = names[row].as_py()
    lists = lambda a, typ: pa.ListArray.from_arrays(offsets, pa.array(a[order], typ))
    return pa.table(
        {
            "experiment": ids,
            "t": lists(table["t"].to_numpy(), pa.float64()),
            "channel": lists(channel, pa.int16()),
            "value": lists(table["value"].to_numpy(), pa.float64()),
            "unknown": pa.array(unknown, pa.string()),
        }
    )


def _tag(folded: pa.Table, bounds: np.ndarray, todo: np.ndarray) -> pa.Table:
    """Stage 3a: the part of each folded row (``bounds``: the first id of every part);
    rows of parts not in ``todo`` (written by an earlier run) are dropped. Text ids
    become integers where ``bounds`` are (see :func:`_integer_ids`)."""
    if bounds.dtype.kind in "iu" and not pa.types.is_integer(folded.schema.field("experiment").type):
        folded = folded.set_column(0, "experiment", pc.cast(folded["experiment"], pa.int64()))
    ids = folded["experiment"].to_numpy(zero_copy_only=False)
    if ids.dtype == object:
        ids = ids.astype(str)
    part = np.searchsorted(bounds, ids, side="right") - 1
    keep = np.isin(part, todo)
    return folded.filter(pa.array(keep)).append_column("part", pa.array(part[keep].astype(np.int64)))


def _pack(group: pa.Table, model: str | Model, chunk_size: int) -> pa.Table:
    """Stage 3b: the folded rows of one part -> one row: the part's first index and its
    experiments' arrays and errors (pickled :class:`frame.Observations`)."""
    m = load_model(model)
    part = int(group["part"][0].as_py())
    lengths = pc.list_value_length(group["t"]).to_numpy(zero_copy_only=False).astype(np.int64)
    ids, fold_codes = frame._codes(group["experiment"], sort=True)
    owner = np.repeat(np.arange(group.num_rows), lengths)  # folded row of each observation
    unknown = group["unknown"].to_pylist()
    flat = lambda name: pc.list_flatten(group[name]).to_numpy(zero_copy_only=False)
    obs = frame.group_codes(
        ids,
        fold_codes[owner],
        flat("t"),
        flat("channel"),
        flat("value"),
        m,
        unknown_name=lambda row: unknown[owner[row]],
    )
    return pa.table(
        {
            "first": pa.array([part * chunk_size], pa.int64()),
            "payload": pa.array([pickle.dumps(obs)], pa.large_binary()),
        }
    )


class _Estimator:
    """Stage 4 (an actor of the pool): network estimates and intervals of whole parts.
    With ``root_uri`` (``--refine never``: nothing follows) it writes each part itself
    and returns its counts, as :func:`_finish` does; otherwise it passes the estimates on."""

    def __init__(self, checkpoint: str, level: float, batch_size: int, root_uri: str | None):
        torch.set_num_threads(1)
        self.est = load_estimator(checkpoint)
        self.level, self.batch_size, self.root_uri = level, batch_size, root_uri

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = []
        for payload in batch["payload"].to_pylist():
            obs = pickle.loads(payload)
            parts.append((obs, network_estimates(self.est, obs, self.level, self.batch_size)))
        if self.root_uri is not None:
            return _write_parts(batch["first"].to_pylist(), parts, self.est, self.root_uri, self.level)
        payloads = [pickle.dumps(part) for part in parts]
        return pa.table({"first": batch["first"], "payload": pa.array(payloads, pa.large_binary())})


def network_estimates(est, obs: frame.Observations, level: float, batch_size: int) -> dict[str, np.ndarray]:
    """``est.infer`` (no refinement) of the experiments of ``obs`` without an error, in
    batches of ``batch_size``, as the rows of :mod:`mechinfer.estimate.refine`; NaN
    (status None) for the others."""
    b, p = len(obs), est.model.n_parameters
    res = {name: np.full((b, p), np.nan) for name in ("z", "center")}
    res.update(cov_z=np.full((b, p, p), np.nan), nll=np.full(b, np.nan), gof_pvalue=np.full(b, np.nan))
    res.update(p_eff=np.full(b, np.nan), refined=np.zeros(b, bool), refine_status=np.full(b, None, dtype=object))
    rows = np.flatnonzero(obs.ok)
    for a in range(0, len(rows), batch_size):
        sel = rows[a : a + batch_size]
        width = _width(obs, sel)
        r = est.infer(obs.t[sel, :width], obs.channel[sel, :width], obs.value[sel, :width], refine=False, level=level)
        for name in res:
            if name != "refined":
                res[name][sel] = getattr(r, name)
    return res


def _width(obs: frame.Observations, rows: np.ndarray) -> int:
    return max(1, int(np.isfinite(obs.value[rows]).sum(axis=1).max()))


def _finish(
    batch: pa.Table,
    how: dict,
    checkpoint: str,
    level: float,
    mode: str,
    auto_pvalue: float,
    rows_per_task: int,
    root_uri: str,
) -> pa.Table:
    """Stage 5 (a task per part): the experiments of the part that need refining (all
    with ``always``; with ``auto`` those whose network estimate has a gof_pvalue below
    ``auto_pvalue``, or none) are refined by Ray tasks of ``rows_per_task`` experiments
    each (:func:`_refine_rows`, ``how``: its method and starts; this task's CPU is lent to
    them while it waits), then the part is written."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(_refine_rows)

    def polish(t, channel, value, z) -> dict:
        pending = [
            task.remote(
                checkpoint,
                how,
                t[a : a + rows_per_task],
                channel[a : a + rows_per_task],
                value[a : a + rows_per_task],
                z[a : a + rows_per_task],
            )
            for a in range(0, len(z), rows_per_task)
        ]
        done = ray.get(pending)
        return {k: np.concatenate([d[k] for d in done]) for k in done[0]}

    parts = []
    for payload in batch["payload"].to_pylist():
        obs, res = pickle.loads(payload)
        refine(obs, res, mode, auto_pvalue, polish)
        parts.append((obs, res))
    return _write_parts(batch["first"].to_pylist(), parts, _cached_estimator(checkpoint), root_uri, level)


def refine(obs: frame.Observations, res: dict, mode: str, auto_pvalue: float, polish) -> int:
    """Refine the network's rows ``res`` of a part in place where ``mode`` says (never,
    auto, always; :func:`mechinfer.estimate.refine.select`) with ``polish(t, channel,
    value, z) ->`` :meth:`~mechinfer.estimate.refine.Refined.rows`, combined by
    :func:`mechinfer.estimate.refine.combine`; the number refined."""
    todo, status = stage.select(mode, np.where(obs.ok[:, None], res["z"], 0.0), res["gof_pvalue"], auto_pvalue)
    todo &= obs.ok
    res["refine_status"][obs.ok] = status[obs.ok]
    rows = np.flatnonzero(todo)
    if len(rows):
        width = _width(obs, rows)
        out = polish(obs.t[rows, :width], obs.channel[rows, :width], obs.value[rows, :width], res["z"][rows])
        for name, values in stage.combine({k: v[rows] for k, v in res.items()}, out).items():
            res[name][rows] = values
    return len(rows)


@functools.lru_cache(maxsize=2)
def _cached_estimator(checkpoint: str) -> Estimator:
    return load_estimator(checkpoint)


def _refine_rows(checkpoint: str, how: dict, t, channel, value, z) -> dict[str, np.ndarray]:
    """A refinement task: :meth:`Estimator.polish` of a few experiments (the estimator
    loaded once per worker process) with ``how`` (method, starts), as rows for
    :func:`mechinfer.estimate.refine.combine`."""
    torch.set_num_threads(1)
    return _cached_estimator(checkpoint).polish(t, channel, value, z, **how).rows()


def _write_parts(firsts: list[int], parts: list, est: Estimator, root_uri: str, level: float) -> pa.Table:
    """Write each part (a temporary name, renamed when complete); their counts."""
    fs, root = storage.resolve(root_uri)
    out: dict[str, list] = {"first": [], "estimated": [], "errors": []}
    for first, (obs, res) in zip(firsts, parts):
        ds_format.write_part(fs, root, first, result_table(est, obs, res, level))
        out["first"].append(first)
        out["estimated"].append(int(obs.ok.sum()))
        out["errors"].append(int((~obs.ok).sum()))
    return pa.table(out)


def result_table(est: Estimator, obs: frame.Observations, res: dict, level: float) -> pa.Table:
    """The output rows of a part (SPEC 10), with ``<name>_determined`` (whether the
    observations determine the parameter: :func:`mechinfer.estimate.refine.determined`):
    nulls where there is no estimate (an experiment with an error) or a number is
    undefined (a gof_pvalue; a failed solve). Intervals at ``level`` from each row's
    approximation, with the recalibration of a refined or a network answer."""
    m = est.model
    number = lambda a: pa.array(a, pa.float64(), mask=~np.isfinite(a))
    res = {**res, "theta": m.from_z(res["z"])}
    res["lower"], res["upper"] = intervals(m, res["center"], res["cov_z"], level, est.interval_scale(res["refined"]))
    determined = stage.determined(np.nan_to_num(res["cov_z"], nan=np.inf))
    exp_type = pa.int64() if obs.experiments.dtype.kind in "iu" else pa.string()
    cols: dict[str, pa.Array] = {"experiment": pa.array(obs.experiments, exp_type)}
    for j, name in enumerate(m.parameter_names):
        cols[name] = number(res["theta"][:, j])
        cols[f"{name}_low"] = number(res["lower"][:, j])
        cols[f"{name}_high"] = number(res["upper"][:, j])
        cols[f"{name}_determined"] = pa.array(determined[:, j], pa.bool_(), mask=~obs.ok)
    cols["level"] = pa.array(np.full(len(obs), level), pa.float64())
    cols["nll"] = number(res["nll"])
    cols["gof_pvalue"] = number(res["gof_pvalue"])
    cols["refine_status"] = pa.array(res["refine_status"].tolist(), pa.string())
    cols["n_observations"] = pa.array(obs.n_rows, pa.int64())
    cols["error"] = pa.array(obs.error, pa.string())
    return pa.table(cols)


# ------------------------------------------------------------------- the job
@dataclass
class EstimateSummary:
    model: str
    input: str
    location: str
    experiments: int
    estimated: int
    errors: int
    refine: str
    refine_status: dict[str, int] = field(default_factory=dict)
    parts: int = 0
    parts_resumed: int = 0
    wall_s: float = 0.0
    experiments_per_s: float = 0.0  # experiments of this run's parts (resumed ones excluded) per second

    def __str__(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.refine_status.items()))
        return (
            f"estimated {self.estimated} of {self.experiments} {self.model} experiments from {self.input} into "
            f"{self.location}: {self.errors} with errors; refine {self.refine} ({statuses}); {self.parts} parts "
            f"({self.parts_resumed} resumed), {self.wall_s:.1f} s wall, {self.experiments_per_s:.0f} experiments/s"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_table(
    model: str | Model,
    input: str,
    output: str,
    *,
    checkpoint: str | None = None,
    refine: str = EstimateConfig.refine,
    level: float = EstimateConfig.level,
    auto_pvalue: float = EstimateConfig.auto_pvalue,
    chunk_size: int = EstimateConfig.chunk_size,
    actors: int | None = EstimateConfig.actors,
    batch_size: int = EstimateConfig.batch_size,
    refine_batch: int = EstimateConfig.refine_batch,
    refine_method: str = EstimateConfig.refine_method,
    refine_starts: int = EstimateConfig.refine_starts,
    overwrite: bool = False,
    command: str = "",
) -> EstimateSummary:
    """Estimate every experiment of the long table at ``input`` into ``output`` (see the
    module docstring; starts an embedded Ray when none is connected). Bad input (no such
    file, not Parquet or CSV, a missing column) raises ValueError before anything is
    written; a complete output is refused unless ``overwrite``; an unfinished one with
    the same settings is resumed."""
    import ray

    m = load_model(model)
    mode = stage.mode(refine)
    level = check_level(level)
    auto_pvalue = float(auto_pvalue)
    if not 0 < auto_pvalue < 1:
        raise ValueError(f"auto_pvalue must lie in (0, 1), got {auto_pvalue:g}")
    chunk_size = positive_int("chunk_size", chunk_size)
    batch_size = positive_int("batch_size", batch_size)
    refine_batch = positive_int("refine_batch", refine_batch)
    refine_method = stage.check_method(refine_method)
    refine_starts = stage.check_starts(refine_starts)
    if actors is not None:
        actors = positive_int("actors", actors)
    if checkpoint is None and m.source is not None:
        raise ValueError(f"model {m.name!r} comes from a file and has no shipped checkpoint: give --checkpoint")
    checkpoint = checkpoint or m.name
    est = load_estimator(checkpoint)  # fails early on a missing checkpoint or another model's
    check_model(m, est.meta, f"checkpoint {checkpoint}")
    source = open_input(input)
    fs, root = storage.resolve(output)
    out_abs, in_abs = storage.absolute(output).rstrip("/"), source.location.rstrip("/")
    if out_abs == in_abs or out_abs.startswith(in_abs + "/"):
        raise ValueError(f"output location {output} lies inside the input {input}")
    if not overwrite and storage.exists(fs, f"{root}/{storage.MANIFEST}"):
        raise FileExistsError(f"{output} already holds a complete estimate result; pass --overwrite to replace it")

    start = time.perf_counter()
    ensure_ray()
    folded = _read_and_fold(source, m)
    ids = _distinct_ids(folded)
    if source.format == "csv":
        ids = _integer_ids(ids)
    n = len(ids)
    if n == 0:
        raise ValueError(f"input {input} has no rows")
    firsts = list(range(0, n, chunk_size))
    bounds = ids[firsts]
    ckpt = checkpoint if checkpoint == m.name else storage.absolute(checkpoint)
    params = {
        "model": m.name,
        **({"model_hash": m.source_hash} if m.source is not None else {}),  # a model file's version
        "checkpoint": ckpt,
        "checkpoint_id": est.checkpoint_id,
        "input": source.location,
        "input_fingerprint": source.fingerprint,
        "experiments": n,
        "level": level,
        "refine": mode,
        "auto_pvalue": auto_pvalue,
        **({"refine_method": refine_method} if mode != "never" else {}),
        **({"refine_starts": refine_starts} if mode != "never" and refine_starts != 1 else {}),  # earlier runs: 1
        "chunk_size": chunk_size,
    }
    with storage.lock(output, "estimate"):  # one writer at a time; before anything is deleted
        done = ds_format.prepare_location(fs, root, output, params, overwrite, intent=INTENT, what="estimate result")
        todo = [i for i, f in enumerate(firsts) if ds_format.part_name(f) not in done]
        done_now = sum(min(firsts[i] + chunk_size, n) - firsts[i] for i in todo)  # experiments of this run
        run_start = time.perf_counter()
        if todo:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            pool = actors or pool_size(cpus, mode, done_now)
            log.info(
                "%s: %d experiments in %d parts (%d written before), %d estimator actors, refine %s",
                output,
                n,
                len(firsts),
                len(firsts) - len(todo),
                pool,
                mode,
            )
            tagged = folded.map_batches(_tag, batch_format="pyarrow", fn_args=(bounds, np.array(todo)))  # type: ignore[arg-type]
            tagged.context.shuffle_strategy = SHUFFLE  # this dataset's own context, not the process's
            grouped = (
                tagged.groupby("part")
                .map_groups(_pack, batch_format="pyarrow", fn_args=(m, chunk_size))  # type: ignore[arg-type]
                .materialize()
            )
            root_uri = storage.absolute(output)
            parts = grouped.map_batches(
                _Estimator,  # type: ignore[arg-type]
                batch_format="pyarrow",
                batch_size=1,
                fn_constructor_args=(ckpt, level, batch_size, root_uri if mode == "never" else None),
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_cpus=1,
            )
            if mode != "never":
                how = {"method": refine_method, "starts": refine_starts}
                parts = parts.map_batches(
                    _finish,  # type: ignore[arg-type]
                    batch_format="pyarrow",
                    batch_size=1,
                    fn_args=(how, ckpt, level, mode, auto_pvalue, refine_batch, root_uri),
                    num_cpus=1,
                )
            ds_format.drain_written(parts, len(todo), output, f"estimate {m.name}", "part")
        run_wall = time.perf_counter() - run_start
        counts = _verify(fs, root, output, ids)
        ds_format.remove_partial_writes(fs, root)
        wall = time.perf_counter() - start
        summary = EstimateSummary(
            model=m.name,
            input=input,
            location=output,
            experiments=n,
            estimated=counts["estimated"],
            errors=counts["errors"],
            refine=mode,
            refine_status=counts["refine_status"],
            parts=len(firsts),
            parts_resumed=len(firsts) - len(todo),
            wall_s=wall,
            experiments_per_s=done_now / max(wall, 1e-9),
        )
        manifest = {
            "spec_version": SPEC_VERSION,
            "kind": "estimate",
            **params,
            "n_samples": n,
            "estimated": counts["estimated"],
            "errors": counts["errors"],
            "refine_status": counts["refine_status"],
            "parameter_names": list(m.parameter_names),
            "channels": list(m.channels),
            "code_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command,
            "machine": machine(),
            "wall_s": round(wall, 3),
            "run_wall_s": round(run_wall, 3),
        }
        storage.write_json(fs, f"{root}/{storage.MANIFEST}", manifest)
        fs.delete_file(f"{root}/{INTENT}")
        return summary


EXPERIMENTS_PER_ACTOR = 2048  # below this an actor's start (a process, torch, the network: ~3 s) outweighs its work


def pool_size(cpus: int, mode: str, experiments: int) -> int:
    """Estimator actors by default: one per CPU, one per EXPERIMENTS_PER_ACTOR
    experiments at most; with refinement one CPU is left to the refinement tasks, which
    start while the pool runs (a pool holding every CPU would stall them)."""
    free = cpus if mode == "never" else cpus - 1
    return max(1, min(free, -(-experiments // EXPERIMENTS_PER_ACTOR)))


def _read_and_fold(source: Input, model: Model):
    """Stage 1, materialized: every file read before anything is written."""
    try:
        return source.read().map_batches(_fold, batch_format="pyarrow", fn_args=(model,)).materialize()  # type: ignore[arg-type]
    except Exception as exc:
        cause = _user_cause(exc)
        if cause is None:
            raise
        raise ValueError(_explain(source, cause)) from None


def _explain(source: Input, cause: BaseException) -> str:
    """One line for a read that failed in Ray Data. Its CSV reader keeps the file's name
    but drops pyarrow's reason (which row, what is wrong): that file is read again here,
    on this failure only, for the reason."""
    text = _first_line(cause)
    for path in source.paths:
        if f"Failed to read CSV file: {path}." in text:
            try:
                with source.fs.open_input_stream(path, compression="gzip" if path.endswith(".gz") else None) as f:
                    pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types=CSV_TYPES))
            except pa.ArrowException as exc:
                return f"cannot read input {path}: {_first_line(exc)}"
            return f"cannot read input {path}: {text}"
    return f"cannot read input {source.location}: {text}"


def _user_cause(exc: BaseException) -> BaseException | None:
    """The input's fault inside a Ray error: the innermost pyarrow read or parse error,
    or ValueError about a column, of its chain of causes; None for anything else."""
    found, seen = None, set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        wrapper = type(current).__name__.startswith("RayTaskError")
        if isinstance(current, (pa.ArrowException, ValueError)) and not wrapper:
            found = current
        current = getattr(current, "cause", None) or current.__cause__
    return found


def _integer_ids(ids: np.ndarray) -> np.ndarray:
    """Text ids (a CSV's) as int64 when every one is an integer as written (``12``,
    ``-3``; not ``012``, ``-0`` or ``1.0``), sorted; otherwise as they are."""
    if ids.dtype.kind != "U" or not len(ids):
        return ids
    text = pa.array(ids.tolist(), pa.string())
    if not pc.all(pc.match_substring_regex(text, r"^(0|-?[1-9][0-9]{0,17})$")).as_py():
        return ids
    return np.sort(pc.cast(text, pa.int64()).to_numpy())


def _distinct_ids(folded) -> np.ndarray:
    """The sorted distinct experiment ids (int64, or str) of the folded rows."""
    chunks = [
        b["experiment"]
        for b in folded.select_columns(["experiment"]).iter_batches(batch_format="pyarrow", batch_size=None)
    ]
    if not chunks:
        return np.array([], dtype=np.int64)
    ids = pc.unique(pa.chunked_array(chunks).combine_chunks())
    ids = ids.take(pc.sort_indices(ids)).to_numpy(zero_copy_only=False)
    return ids.astype(str) if ids.dtype == object else ids


def _verify(fs: pafs.FileSystem, root: str, out: str, ids: np.ndarray) -> dict:
    """Every experiment in the output exactly once; the counts of the summary."""
    table = pads.dataset(ds_format.list_parts(fs, root), filesystem=fs, format="parquet").to_table(
        columns=["experiment", "error", "refine_status"]
    )
    got = table["experiment"].to_numpy(zero_copy_only=False)
    got = np.sort(got.astype(str) if got.dtype == object else got)
    if len(got) != len(ids) or not np.array_equal(got, ids):
        raise RuntimeError(
            f"{out}: expected each of {len(ids)} experiments once, found {len(got)} rows; result left incomplete"
        )
    errors = int(table["error"].is_valid().to_numpy(zero_copy_only=False).sum())
    status = table["refine_status"].drop_null().value_counts().to_pylist()
    return {
        "estimated": len(ids) - errors,
        "errors": errors,
        "refine_status": {s["values"]: int(s["counts"]) for s in status},
    }


def read_estimates(location: str) -> pa.Table:
    """The rows of a complete estimate result (``mechinfer estimate --output``), sorted by
    experiment id; ``.to_pandas()`` for a DataFrame."""
    storage.read_manifest(location, what="estimate result", kind="estimate")
    fs, root = storage.resolve(location)
    return pads.dataset(ds_format.list_parts(fs, root), filesystem=fs, format="parquet").to_table()
