"""A long table of measurements as the arrays :meth:`Estimator.infer` takes (SPEC 8, 10).

A long table has one row per observation: ``experiment`` (string or integer id), ``t``
(hours), ``channel`` (a channel name of the model) and ``value``. It becomes experiment
ids and NaN-padded (B, N) arrays of times, channel indices and values, one row per
experiment, plus an ``error`` per experiment: None, or what is wrong with its rows (an
unknown or missing channel, a time outside ``[0, T]``, a non-finite or non-numeric time
or value, a value not above 0 on a channel whose observable is on a log scale, no
observations). An experiment with an error keeps no observations in the
arrays (its row is padding only) and gets no estimate; the others are unaffected.

Order: experiments in the order of their first row (``sort=True``: sorted by id), and
each experiment's observations sorted by time (then channel), so the arrays, and the
estimates, do not depend on how the table's rows were shuffled.

Everything here is vectorised over rows (Arrow and numpy); only experiments with bad
rows cost Python work, for their messages. The bulk estimation job
(:mod:`mechinfer.estimate.bulk`) runs the same code on each of its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..models import load_model
from ..models.base import Model

COLUMNS = ("experiment", "t", "channel", "value")

# what is wrong with a row, in the order a message names them (0: nothing)
OK, NO_CHANNEL, UNKNOWN_CHANNEL, BAD_TIME, TIME_OUTSIDE, BAD_VALUE, NOT_POSITIVE = range(7)
UNKNOWN, MISSING = -1, -2  # channel index of a name the model lacks / of a null channel


@dataclass
class Observations:
    """Experiments of a long table as :meth:`Estimator.infer`'s arrays."""

    experiments: np.ndarray  # (B,) ids: int64, or object (str)
    t: np.ndarray  # (B, N) float64 hours, NaN-padded
    channel: np.ndarray  # (B, N) int64 index into model.channels (0 where padded)
    value: np.ndarray  # (B, N) float64 in the model's units (the estimator maps them to its noise space), NaN-padded
    error: list[str | None]  # (B,) None, or why the experiment gets no estimate
    n_rows: np.ndarray  # (B,) rows the table has for each experiment (placeholder rows not counted)
    model: str

    @property
    def ok(self) -> np.ndarray:
        """(B,) bool: the experiments to estimate (no error)."""
        return np.array([e is None for e in self.error], dtype=bool)

    def __len__(self) -> int:
        return len(self.experiments)


def observations_from_frame(frame, model: Model | str, *, sort: bool = False) -> Observations:
    """A long pandas DataFrame or pyarrow Table with columns ``experiment``, ``t``,
    ``channel`` (names) and ``value`` (other columns are ignored) -> :class:`Observations`::

        obs = mechinfer.observations_from_frame(df, "ecoli")
        res = est.infer(obs.t[obs.ok], obs.channel[obs.ok], obs.value[obs.ok])
        ids = obs.experiments[obs.ok]

    Experiments come in the order of their first row (``sort=True``: sorted by id).
    Missing columns, an experiment column that is neither string nor integer, or rows
    without an experiment id raise ValueError; bad rows only set their experiment's
    ``error``."""
    m = load_model(model)
    table = as_table(frame)
    check_columns(table.column_names)
    return group(canonical(table.select(list(COLUMNS))), m, sort=sort)


def as_table(frame) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with ray[data]
        pd = None
    if pd is not None and isinstance(frame, pd.DataFrame):
        check_columns(frame.columns)
        return pa.table({name: _from_pandas(frame[name], name, pd) for name in COLUMNS})
    raise ValueError(f"expected a pandas DataFrame or a pyarrow Table, got {type(frame).__name__}")


def _from_pandas(series, name: str, pd) -> pa.Array:
    try:
        return pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if name in ("t", "value"):  # numbers mixed with text: the text that is no number becomes NaN
            return pa.array(pd.to_numeric(series, errors="coerce"), pa.float64(), from_pandas=True)
        raise ValueError(f"the {name} column must hold {_KINDS[name]} of one type only") from None


_KINDS = {"experiment": "strings or integers", "channel": "channel names (strings)"}


def check_columns(names) -> None:
    missing = [c for c in COLUMNS if c not in set(names)]
    if missing:
        raise ValueError(
            f"the table lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(a long table needs {', '.join(COLUMNS)})"
        )


def canonical(table: pa.Table) -> pa.Table:
    """The four columns as ``experiment`` int64 or string (no nulls), ``t`` and ``value``
    float64 (NaN where null or not a number), ``channel`` string."""
    exp = _experiment_ids(table["experiment"])
    return pa.table(
        {
            "experiment": exp,
            "t": pa.array(_numbers(table["t"]), pa.float64()),
            "channel": _strings(table["channel"], "channel"),
            "value": pa.array(_numbers(table["value"]), pa.float64()),
        }
    )


def _experiment_ids(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if col.null_count:
        raise ValueError(f"{col.null_count} row(s) have no experiment id")
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.int64())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    raise ValueError(f"the experiment column must hold strings or integers, not {col.type}")


def _strings(column, name: str) -> pa.Array:
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_null(col.type):
        return pa.array([None] * len(col), pa.string())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    raise ValueError(f"the {name} column must hold channel names (strings), not {col.type}")


def _numbers(column) -> np.ndarray:
    """float64 with NaN for nulls and for text that is not a number."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(col)
        try:
            return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # some text is no number: row by row
            return np.array([_float(s) for s in text.to_pylist()], dtype=np.float64)
    raise ValueError(f"t and value must hold numbers, not {col.type}")


def _float(text: str | None) -> float:
    try:
        return float(text) if text is not None else np.nan
    except ValueError:
        return np.nan


def channel_indices(channel: pa.Array, model: Model) -> np.ndarray:
    """Channel names -> int16 index into ``model.channels``; UNKNOWN for a name the
    model lacks, MISSING for a null."""
    enc = pc.dictionary_encode(channel)
    lookup = np.array([model.channels.index(c) if c in model.channels else UNKNOWN for c in enc.dictionary.to_pylist()])
    idx = enc.indices.to_numpy(zero_copy_only=False)
    out = np.full(len(channel), MISSING, dtype=np.int16)
    present = ~np.isnan(idx) if idx.dtype.kind == "f" else np.ones(len(idx), bool)
    out[present] = lookup[idx[present].astype(np.int64)] if len(lookup) else MISSING
    return out


def group(table: pa.Table, model: Model, *, sort: bool = False) -> Observations:
    """:class:`Observations` of a :func:`canonical` table."""
    ids, codes = _codes(table["experiment"], sort)
    channel = channel_indices(table["channel"].combine_chunks(), model)
    unknown = table["channel"].combine_chunks()
    return group_codes(
        ids,
        codes,
        table["t"].to_numpy(),
        channel,
        table["value"].to_numpy(),
        model,
        unknown_name=lambda row: unknown[row].as_py(),
    )


def _codes(experiment, sort: bool) -> tuple[pa.Array, np.ndarray]:
    """(distinct ids, each row's index into them): ids in order of first appearance, or
    sorted."""
    col = experiment.combine_chunks() if isinstance(experiment, pa.ChunkedArray) else experiment
    enc = pc.dictionary_encode(col)
    ids, codes = enc.dictionary, enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if sort and len(ids):
        order = pc.sort_indices(ids).to_numpy()
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        ids, codes = ids.take(pa.array(order)), rank[codes]
    return ids, codes


def group_codes(
    ids: pa.Array,
    codes: np.ndarray,
    t: np.ndarray,
    channel: np.ndarray,
    value: np.ndarray,
    model: Model,
    *,
    unknown_name,
) -> Observations:
    """Rows given as each row's experiment index ``codes`` into ``ids``, float64 ``t``
    and ``value``, int ``channel`` (:func:`channel_indices`) -> :class:`Observations`.
    ``unknown_name(row)`` names the channel of a row whose channel is UNKNOWN."""
    b = len(ids)
    problem = np.zeros(len(codes), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        checks = (
            (channel == MISSING, NO_CHANNEL),
            (channel == UNKNOWN, UNKNOWN_CHANNEL),
            (~np.isfinite(t), BAD_TIME),
            ((t < 0) | (t > model.T), TIME_OUTSIDE),
            (~np.isfinite(value), BAD_VALUE),
            (_log_scale(model, channel) & ~(value > 0), NOT_POSITIVE),
        )
    for bad, code in reversed(checks):  # the first check that fails names the row's problem
        problem[bad] = code
    empty = (channel == MISSING) & np.isnan(t) & np.isnan(value)  # a placeholder: the experiment, no observation
    problem[empty] = OK
    n_rows = np.bincount(codes, weights=~empty, minlength=b).astype(np.int64)
    n_bad = np.bincount(codes, weights=problem > 0, minlength=b).astype(np.int64)
    error: list[str | None] = [None] * b
    bad_rows = np.flatnonzero(problem)
    if len(bad_rows):
        first_rows: dict[int, int] = {}
        for row in bad_rows.tolist():  # rows in table order: the first bad row of each experiment
            first_rows.setdefault(int(codes[row]), row)
        for e, row in first_rows.items():
            what = _describe(int(problem[row]), t[row], value[row], row, model, unknown_name, channel)
            more = n_bad[e] - 1
            error[e] = what if not more else f"{what} (and {more} more bad row{'s' if more > 1 else ''})"
    for e in np.flatnonzero(n_rows == 0).tolist():
        error[e] = "no observations"
    good = (n_bad == 0) & (n_rows > 0)
    keep = good[codes] & ~empty
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((channel[rows], t[rows], codes[rows]))]  # by experiment, then time, then channel
    k = codes[order]
    width = int(n_rows[good].max()) if good.any() else 1
    starts = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(np.where(good, n_rows, 0), out=starts[1:])
    pos = np.arange(len(order)) - starts[k]
    shape = (b, width)
    t_out, v_out, ch_out = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=np.int64)
    t_out[k, pos], v_out[k, pos], ch_out[k, pos] = t[order], value[order], channel[order]
    return Observations(
        experiments=ids.to_numpy(zero_copy_only=False),
        t=t_out,
        channel=ch_out,
        value=v_out,
        error=error,
        n_rows=n_rows.astype(np.int64),
        model=model.name,
    )


def _describe(problem: int, t: float, value: float, row: int, model: Model, unknown_name, channel: np.ndarray) -> str:
    if problem == NO_CHANNEL:
        return "a row has no channel"
    if problem == UNKNOWN_CHANNEL:
        return f"unknown channel {unknown_name(row)!r} ({model.name} observes {', '.join(model.channels)})"
    if problem == BAD_TIME:
        return f"a time is not a finite number ({t})"
    if problem == TIME_OUTSIDE:
        return f"time {t:g} h lies outside [0, {model.T:g}] h"
    if problem == BAD_VALUE:
        return f"a value is not a finite number ({value}) at t = {t:g} h"
    obs = model.observation
    assert obs is not None  # NOT_POSITIVE: a channel of a log-scale observable
    c = int(channel[row])
    scale = obs.observables[obs.channel_observable[c]].transformation
    return (
        f"value {value:g} at t = {t:g} h of channel {model.channels[c]!r} is not positive; "
        f"its observable is on a {scale} scale, so its values must be > 0"
    )


def _log_scale(model: Model, channel: np.ndarray) -> np.ndarray:
    """(rows,) bool: the row's channel is known and its observable on a log scale (a
    model with an observation model of its own, a PEtab problem's)."""
    if model.observation is None:
        return np.zeros(len(channel), dtype=bool)
    known = channel >= 0
    out = np.zeros(len(channel), dtype=bool)
    out[known] = model.observation.transformation[channel[known].astype(np.int64)] != 0
    return out


def to_table(experiments, t, channel, value, model: Model | str) -> pa.Table:
    """The long table of (B, N) NaN-padded arrays (the inverse of
    :func:`observations_from_frame`): one row per finite observation, experiments in the
    given order, channel names."""
    m = load_model(model)
    t, value, channel = np.asarray(t, dtype=np.float64), np.asarray(value, dtype=np.float64), np.asarray(channel)
    present = np.isfinite(t)
    rows, cols = np.nonzero(present)
    experiments = np.asarray(experiments)
    return pa.table(
        {
            "experiment": pa.array(experiments[rows]),
            "t": pa.array(t[rows, cols]),
            "channel": pa.array(np.array(m.channels, dtype=object)[channel[rows, cols].astype(np.int64)]),
            "value": pa.array(value[rows, cols]),
        }
    )
