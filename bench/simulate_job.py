"""Measure the simulation job end to end: wall time, throughput and peak memory.

    python bench/simulate_job.py --model ecoli --n 1000000 --out /tmp/ecoli-1m

Runs ``jobs/simulate.py`` as a user would (embedded Ray) and samples the machine's used
memory (MemTotal - MemAvailable) every 0.5 s; peak memory is reported above the level
measured just before the job starts, so it covers the driver, Ray and every worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def used_bytes() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = lambda k: int(info[k].split()[0]) * 1024
    return kib("MemTotal") - kib("MemAvailable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more job arguments")
    args = parser.parse_args()

    baseline = used_bytes()
    peak = [baseline]
    done = threading.Event()

    def watch():
        while not done.wait(0.5):
            peak[0] = max(peak[0], used_bytes())

    threading.Thread(target=watch, daemon=True).start()
    start = time.perf_counter()
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "simulate.py"),
        "--model",
        args.model,
        "--n",
        str(args.n),
        "--seed",
        "0",
        "--out",
        args.out,
        "--overwrite",
        *args.extra,
    ]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    done.set()
    if run.returncode != 0:
        sys.exit(f"job failed with exit code {run.returncode}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"job wall time (incl. Ray start): {wall:.1f} s")
    print(
        f"job summary: {summary['samples']} samples, {summary['failures']} failures, "
        f"{summary['wall_s']:.1f} s, {summary['samples_per_s']:.0f} samples/s"
    )
    print(f"peak memory above baseline: {(peak[0] - baseline) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
