"""How bulk estimation groups a long table by experiment: the designs measured.

    python bench/bulk_grouping.py /tmp/mechinfer-bulk-bench/input-ecoli-100000.parquet

(the input bench/bulk_estimate.py makes). With warm Ray workers, the seconds of reading
the table, collecting the distinct experiment ids in the driver and bringing each part's
rows together as its arrays (the part's Observations), for:

- folded: each block folded into one row per experiment (what the job does,
  ``mechinfer.estimate.bulk._fold``), then grouped by part;
- flat: the rows as they are, grouped by part;
- folded, hash shuffle: Ray Data's default shuffle (aggregator actors) instead of the
  sort-based one the job uses;
- per experiment: ``groupby("experiment").map_groups`` on the flat rows (one Python
  call per experiment; its output not packed into parts).
"""

from __future__ import annotations

import pickle
import sys
import time

import numpy as np
import pyarrow as pa
import ray
from ray.data.context import DataContext, ShuffleStrategy

from mechinfer.estimate import bulk, frame
from mechinfer.models import get_model

CHUNK = 2048
SORT, HASH = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, ShuffleStrategy.SHUFFLE_V2


def canonical(block: pa.Table) -> pa.Table:
    return frame.canonical(block.select(list(frame.COLUMNS)))


def tag_flat(block: pa.Table, bounds: np.ndarray) -> pa.Table:
    part = np.searchsorted(bounds, block["experiment"].to_numpy(), side="right") - 1
    return block.append_column("part", pa.array(part.astype(np.int64)))


def pack_flat(group: pa.Table, model: str) -> pa.Table:
    obs = frame.group(group, get_model(model), sort=True)
    first = int(group["part"][0].as_py()) * CHUNK
    return pa.table({"first": pa.array([first]), "payload": pa.array([pickle.dumps(obs)], pa.large_binary())})


def one_experiment(group: pa.Table) -> pa.Table:
    return pa.table({"experiment": group["experiment"][:1], "n": pa.array([group.num_rows])})


def timed(what: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"  {what:42s} {time.perf_counter() - start:6.1f} s", flush=True)
    return out


def main() -> None:
    path = sys.argv[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    source = bulk.open_input(path)
    # start and warm the workers (importing mechinfer) before anything is timed
    ray.data.range(8, override_num_blocks=4).map_batches(
        lambda b: (__import__("mechinfer.estimate.bulk"), b)[1]
    ).materialize()
    print(f"{path}: {source.read().count()} rows")

    print("folded (the job):")
    folded = timed("read + fold", lambda: bulk._read_and_fold(source, "ecoli"))
    ids = timed("distinct ids", lambda: bulk._distinct_ids(folded))
    bounds, todo = ids[::CHUNK], np.arange(len(ids[::CHUNK]))
    for strategy, name in ((SORT, "sort shuffle"), (HASH, "hash shuffle")):
        tagged = folded.map_batches(bulk._tag, batch_format="pyarrow", fn_args=(bounds, todo))
        tagged.context.shuffle_strategy = strategy
        grouped = tagged.groupby("part").map_groups(bulk._pack, batch_format="pyarrow", fn_args=("ecoli", CHUNK))
        timed(f"group by part, {name}", lambda: grouped.materialize())  # noqa: B023

    print("flat:")
    flat = timed("read", lambda: source.read().map_batches(canonical, batch_format="pyarrow").materialize())
    timed("distinct ids", lambda: bulk._distinct_ids(flat))
    tagged = flat.map_batches(tag_flat, batch_format="pyarrow", fn_args=(bounds,))
    tagged.context.shuffle_strategy = SORT
    timed(
        "group by part, sort shuffle",
        lambda: tagged.groupby("part").map_groups(pack_flat, batch_format="pyarrow", fn_args=("ecoli",)).materialize(),
    )
    flat.context.shuffle_strategy = SORT
    timed(
        "group by experiment (not packed)",
        lambda: flat.groupby("experiment").map_groups(one_experiment, batch_format="pyarrow").materialize(),
    )


if __name__ == "__main__":
    main()
