"""Measure the simulation job end to end against the solver alone: rates, ratio, memory.

    python bench/simulate_job.py --model ecoli --n 1000000 --out /tmp/ecoli-1m

First the native solver alone on one core (torch threads = 1): the job's own first
draws (seed 0), in chunks of the job's size, best of ``--repeats`` passes; the job can
at best run that fast on every core. Then ``jobs/simulate.py`` as a user would run it
(embedded Ray, started inside the job's wall time), while the machine's used memory
(MemTotal - MemAvailable) is sampled every 0.5 s; peak memory is reported above the
level measured just before the job starts, so it covers the driver, Ray and every
worker. The solver is timed again after the job and the faster of the two timings is
used (the machine is shared: the ratio is then a lower bound). Prints both rates, the
ratio of the job's rate to cores x the solver's, the load average around each part, and
where the machine's CPU time went during the job: the job's own process tree (driver,
Ray's processes, workers; read from /proc every 0.5 s), the solver's share of it, and
everything else (other users of the machine: a noisy run shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from mechinfer.config import SimulateConfig
from mechinfer.models import load_model
from mechinfer.models.design import draw_experiments
from mechinfer.models.simulate import simulate_observed

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.8  # the job's rate must reach this share of cores x the solver's one-core rate


def used_bytes() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = lambda k: int(info[k].split()[0]) * 1024
    return kib("MemTotal") - kib("MemAvailable")


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, since boot)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK  # less idle and iowait


def tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds so far of ``root`` and its descendants (Ray's processes
    and workers) into ``seen``; a process that has ended keeps its last reading."""
    parent, cpu = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d.name)] = int(stat[1])
            cpu[int(d.name)] = (int(stat[11]) + int(stat[12])) / TICK
    for pid in cpu:
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            seen[pid] = cpu[pid]


def solver_seconds_per_draw(model, draws: dict, chunk: int, repeats: int) -> float:
    """The solver alone (simulate_observed, as the job calls it) on the given draws, one
    core: the best of ``repeats`` passes over chunks of ``chunk`` draws."""
    theta, t = torch.from_numpy(draws["theta"]), torch.from_numpy(draws["t"])
    n = len(theta)
    best = float("inf")
    with torch.no_grad():
        simulate_observed(model, theta[:64], t[:64])  # loads the compiled solver
        for _ in range(repeats):
            start = time.perf_counter()
            for a in range(0, n, chunk):
                simulate_observed(model, theta[a : a + chunk], t[a : a + chunk])
            best = min(best, time.perf_counter() - start)
    return best / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--solver-draws", type=int, default=16384, help="draws of the solver-alone timing")
    parser.add_argument("--repeats", type=int, default=2, help="passes of the solver-alone timing (best kept)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more job arguments")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = load_model(args.model)
    chunk = SimulateConfig.chunk_size
    draws = draw_experiments(model, 0, np.arange(args.solver_draws))
    print(f"before the solver: {load()}")
    solver_s = [solver_seconds_per_draw(model, draws, chunk, args.repeats)]

    baseline = used_bytes()
    peak = [baseline]
    done = threading.Event()

    ours: dict[int, float] = {}
    job: list[subprocess.Popen] = []

    def watch():
        while not done.wait(0.5):
            peak[0] = max(peak[0], used_bytes())
            if job:
                tree_cpu(job[0].pid, ours)

    threading.Thread(target=watch, daemon=True).start()
    print(f"before the job: {load()}")
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
    busy = busy_seconds()
    job.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    stdout, _ = job[0].communicate()
    wall = time.perf_counter() - start
    busy = busy_seconds() - busy
    done.set()
    print(f"after the job: {load()}")
    if job[0].returncode != 0:
        sys.exit(f"job failed with exit code {job[0].returncode}")
    solver_s.append(solver_seconds_per_draw(model, draws, chunk, args.repeats))
    summary = json.loads(stdout.strip().splitlines()[-1])

    cores = len(os.sched_getaffinity(0))
    solver_rate = 1 / min(solver_s)
    ratio = summary["samples_per_s"] / (cores * solver_rate)
    print(
        f"solver alone, one core: {min(solver_s) * 1e6:.1f} us/draw = {solver_rate:.0f} draws/s "
        f"(best of {args.repeats} x {args.solver_draws} draws, before the job "
        f"{solver_s[0] * 1e6:.1f}, after {solver_s[1] * 1e6:.1f} us/draw)"
    )
    print(f"job wall time (incl. Python and Ray start): {wall:.1f} s")
    print(
        f"job summary: {summary['samples']} samples, {summary['failures']} failures, "
        f"{summary['wall_s']:.1f} s (incl. Ray start), {summary['samples_per_s']:.0f} samples/s"
    )
    print(
        f"job rate / ({cores} cores x solver rate {cores * solver_rate:.0f}/s): {ratio:.2f} "
        f"(target {TARGET:.2f}: {'met' if ratio >= TARGET else 'NOT met'})"
    )
    print(
        f"CPU during the job: {busy / wall:.2f} of {cores} cores busy on average; the job's own processes "
        f"(driver, Ray, workers) {sum(ours.values()):.0f} CPU s (the solver's share {args.n * min(solver_s):.0f}), "
        f"everything else {busy - sum(ours.values()):.0f} CPU s"
    )
    print(f"peak memory above baseline: {(peak[0] - baseline) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
