"""The dataset format of SPEC 5: a directory of Parquet files plus ``manifest.json``.

Locations are any pyarrow filesystem URI (``s3://bucket/ds``) or a local path. Each
chunk of samples is one file named by its sample range, written under a temporary name
and renamed when complete, so a retried task rewrites the same file and a sample can
never be written twice. The manifest is written last: a directory without one is not a
dataset.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import SPEC_VERSION, __version__
from ..models.base import Model
from ..models.sources import source_record
from ..runtime import Progress
from ..storage import LOCK, MANIFEST, make_directory, read_json, read_manifest, resolve, write_file, write_json

INTENT = "_simulation.json"  # parameters of an unfinished simulation, for resumption
PART_PREFIX = "part-"


def schema(model: Model) -> pa.Schema:
    p = model.n_parameters
    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("theta", pa.list_(pa.float64(), p)),
            ("z", pa.list_(pa.float32(), p)),
            ("t", pa.list_(pa.float32())),
            ("channel", pa.list_(pa.int8())),
            ("value", pa.list_(pa.float32())),
            ("clean", pa.list_(pa.float32())),
            ("status", pa.int8()),
        ]
    )


def to_table(model: Model, columns: dict[str, np.ndarray]) -> pa.Table:
    """Arrow table from numpy columns: sample_id (n,), theta/z (n, P), t/channel/value/
    clean (n, N), status (n,)."""

    def fixed(a, typ):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), typ), a.shape[1])

    def ragged(a, typ):
        n, m = a.shape
        return pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * m + 1, m, dtype=np.int32)), pa.array(a.reshape(-1), typ)
        )

    arrays = [
        pa.array(columns["sample_id"], pa.int64()),
        fixed(columns["theta"].astype(np.float64), pa.float64()),
        fixed(columns["z"].astype(np.float32), pa.float32()),
        ragged(columns["t"].astype(np.float32), pa.float32()),
        ragged(columns["channel"].astype(np.int8), pa.int8()),
        ragged(columns["value"].astype(np.float32), pa.float32()),
        ragged(columns["clean"].astype(np.float32), pa.float32()),
        pa.array(columns["status"], pa.int8()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema(model))


def part_name(first_id: int) -> str:
    return f"{PART_PREFIX}{first_id:012d}.parquet"


def write_part(fs: pafs.FileSystem, root: str, first_id: int, table: pa.Table, **parquet_options) -> str:
    """Write one chunk atomically: a temporary name first, renamed when complete.
    ``parquet_options`` go to ``pyarrow.parquet.write_table`` (encodings: the content
    read back is the same)."""
    final = f"{root}/{part_name(first_id)}"
    write_file(fs, final, lambda f: pq.write_table(table, f, **parquet_options))
    return final


def list_parts(fs: pafs.FileSystem, root: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.path for i in infos if i.base_name.startswith(PART_PREFIX) and i.base_name.endswith(".parquet"))


def make_manifest(model: Model, n: int, seed: int, extra: dict) -> dict:
    return {
        "spec_version": SPEC_VERSION,
        **source_record(model),  # model (its name), model_hash, model_source (SPEC 11)
        "n_samples": int(n),
        "seed": int(seed),
        "sigma": dict(zip(model.channels, model.sigma.tolist())),
        "channels": list(model.channels),
        "parameter_names": list(model.parameter_names),
        "T": model.T,
        "n_obs": model.n_obs,
        "code_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def prepare_location(
    fs: pafs.FileSystem,
    root: str,
    out: str,
    params: dict,
    overwrite: bool,
    *,
    intent: str = INTENT,
    outputs: tuple[str, ...] = (),
    what: str = "dataset",
) -> set[str]:
    """Make ``root`` ready for a run that writes part files, then ``outputs``, then the
    manifest: refuse a complete result unless ``overwrite``; keep the parts of an
    unfinished run with the same ``params`` (recorded in the ``intent`` file) and return
    their names; delete everything else of ours; refuse foreign files."""
    make_directory(fs, root, out)
    manifest = read_json(fs, f"{root}/{MANIFEST}")
    if manifest is not None:
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a complete {what} ({manifest.get('model')}, "
                f"{manifest.get('n_samples')} samples); pass overwrite (--overwrite) to replace it"
            )
        fs.delete_file(f"{root}/{MANIFEST}")  # first, so it never looks complete again
    previous = read_json(fs, f"{root}/{intent}")
    entries = fs.get_file_info(pafs.FileSelector(root))
    ours = {intent, LOCK, *outputs}
    foreign = [
        e.base_name for e in entries if e.base_name not in ours and not e.base_name.startswith((PART_PREFIX, "_tmp-"))
    ]
    if foreign:
        raise ValueError(
            f"output location {out} holds files that are not part of a {what}: {', '.join(sorted(foreign)[:5])}"
        )
    keep = previous == params and not overwrite
    for e in entries:
        if (
            e.base_name.startswith("_tmp-")
            or e.base_name in outputs
            or (not keep and e.base_name.startswith(PART_PREFIX))
        ):
            fs.delete_file(e.path)
    try:
        write_json(fs, f"{root}/{intent}", params)
    except OSError as exc:
        raise ValueError(f"cannot write to output location {out}: {exc}") from None
    return {e.base_name for e in entries if e.base_name.startswith(PART_PREFIX)} if keep else set()


def read_table(location: str, columns: list[str] | None = None) -> pa.Table:
    """The whole dataset as one Arrow table, sorted by sample_id (small datasets and
    tests; training streams it through Ray Data instead)."""
    read_manifest(location)
    fs, root = resolve(location)
    table = pads.dataset(list_parts(fs, root), filesystem=fs, format="parquet").to_table(columns=columns)
    if "sample_id" in table.column_names:
        table = table.sort_by("sample_id")
    return table


def drain_written(written, expected: int, location: str, what: str, unit: str) -> None:
    """Run a Ray Data pipeline whose rows report the parts it wrote (one row per part),
    with progress ("<what>", "<unit>"); fewer reports than ``expected`` is an error (the
    location is left incomplete, for a rerun to resume)."""
    reported = 0
    with Progress(expected, what, unit) as progress:
        for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
            reported += batch.num_rows
            progress.update(batch.num_rows)
    if reported != expected:
        raise RuntimeError(f"{location}: {reported} of {expected} {unit}s reported; result left incomplete")


def remove_partial_writes(fs: pafs.FileSystem, root: str) -> None:
    """Delete the temporary files of writes cut short (a killed worker's) under ``root``."""
    for leftover in fs.get_file_info(pafs.FileSelector(root)):
        if leftover.base_name.startswith("_tmp-"):
            fs.delete_file(leftover.path)
