"""Measure bulk estimation end to end (SPEC 10): experiments per second of the job.

    python bench/bulk_estimate.py --model ecoli --n 100000 --refine never
    python bench/bulk_estimate.py --model ecoli --n 5000 --refine auto

Makes the input once (``--work``/input-<model>-<n>.parquet: n simulated experiments of
the model's design, one row per observation, integer experiment ids, seed 11) and runs
``jobs/estimate.py`` on it as a user would (a new process, embedded Ray, ``--overwrite``).
Reports the wall time including Python and Ray start, the job's own summary, the time of
each Ray Data execution it ran (from its log) and the machine's load average, since
other work on the machine slows every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_input(model: str, n: int, path: Path, chunk: int = 10_000) -> float:
    """Simulate n experiments into the long table at ``path``; seconds taken."""
    import numpy as np
    import pyarrow.parquet as pq

    import mechinfer
    from mechinfer.data.samples import simulate_chunk
    from mechinfer.estimate.frame import to_table

    start = time.perf_counter()
    m = mechinfer.get_model(model)
    tmp = path.with_suffix(".tmp")
    writer = None
    for first in range(0, n, chunk):
        rows = simulate_chunk(m, 11, first, min(first + chunk, n))
        table = to_table(np.arange(first, first + len(rows["t"])), rows["t"], rows["channel"], rows["value"], m)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=256 * 1024)
    assert writer is not None
    writer.close()
    tmp.rename(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--refine", default="never", choices=("never", "auto", "always"))
    parser.add_argument("--work", default="/tmp/mechinfer-bulk-bench")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more job arguments")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"input-{args.model}-{args.n}.parquet"
    if not source.exists():
        seconds = make_input(args.model, args.n, source)
        print(f"input: simulated {args.n} {args.model} experiments into {source} ({seconds:.0f} s)")
    out = work / f"estimates-{args.model}-{args.n}-{args.refine}"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "estimate.py"),
        "--model",
        args.model,
        "--input",
        str(source),
        "--output",
        str(out),
        "--refine",
        args.refine,
        "--overwrite",
        *args.extra,
    ]
    load_before = os.getloadavg()
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    if run.returncode != 0:
        sys.exit(f"the job failed ({run.returncode}):\n{run.stderr[-3000:]}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    plans = re.findall(r"Execution plan of Dataset \S+: (.*)", run.stderr)
    times = [float(s) for s in re.findall(r"execution finished in ([0-9.]+) seconds", run.stderr)]
    from mechinfer.machine import machine

    print(f"command: {' '.join(['python', *cmd[1:]])}")
    print(f"machine: {machine()}; load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(f"experiments: {args.n} ({summary['estimated']} estimated, {summary['errors']} errors), refine {args.refine}")
    print(f"refine_status: {summary['refine_status']}")
    print(f"job wall time (incl. Python and Ray start): {wall:.1f} s -> {args.n / wall:.0f} experiments/s")
    own, rate = summary["wall_s"], summary["experiments_per_s"]
    print(f"job's own wall time (from its start, incl. Ray start): {own:.1f} s -> {rate:.0f} experiments/s")
    for plan, seconds in zip(plans, times):
        stages = " -> ".join(re.findall(r"\[(.*?)\]", plan)[1:])
        print(f"  {seconds:7.1f} s  {stages}")


if __name__ == "__main__":
    main()
