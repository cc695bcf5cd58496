"""What intervals add to a plain answer (issue 14): per-case time at batch 32 of the
network + NLL (the answer before intervals) against the network + the Laplace
approximation (NLL, intervals and goodness of fit from one solve with sensitivities,
what ``est.infer`` and a Serve answer compute now), measured alternately in one run.

    PYTHONPATH=platform python bench/interval_cost.py [--batch 32] [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mechinfer
from mechinfer.data.samples import spec_test_set
from mechinfer.estimate import uncertainty
from mechinfer.fit import mle
from mechinfer.machine import machine


def _plain(m, est, t, ch, v):
    """A plain answer before intervals: the network and the NLL at its estimate."""
    return mle.nll(m, t, ch, v, est.estimate_z(t, ch, v))


def _with_intervals(m, est, t, ch, v):
    """A plain answer now: the network and the Laplace approximation (NLL, intervals, gof)."""
    lap = uncertainty.laplace(m, t, ch, v, est.estimate_z(t, ch, v))
    return lap.intervals(m, 0.95)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    mach = machine()
    print(f"machine: {mach['cpu']}, {mach['cpu_count']} CPUs, 1 torch thread; batch {args.batch}")
    for name in ("mmk", "ecoli"):
        m, est = mechinfer.get_model(name), mechinfer.load_estimator(name)
        d = spec_test_set(m, args.batch)
        t, ch, v = d["t"], d["channel"], d["value"]
        mle.warm_up(m, t, ch, v)

        times: dict[str, list[float]] = {"plain": [], "intervals": []}
        for _ in range(args.repeats):
            for label, fn in (("plain", _plain), ("intervals", _with_intervals)):
                tic = time.perf_counter()
                fn(m, est, t, ch, v)
                times[label].append((time.perf_counter() - tic) / args.batch)
        a, b = np.median(times["plain"]), np.median(times["intervals"])
        print(
            f"{name}: network + NLL {1e3 * a:.3f} ms/case; network + NLL + intervals {1e3 * b:.3f} ms/case; "
            f"ratio {b / a:.2f}x (goal <= 2x)"
        )


if __name__ == "__main__":
    main()
