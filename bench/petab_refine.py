"""Deep Inference + trust region against Deep Inference + BFGS on PEtab problems' own
measurements (issue 24's PEtab point, SPEC 12's "Deep Inference + refine" row).

    python bench/petab_refine.py RUN [RUN ...] [--repeats 5] [--write]

Each RUN is a pipeline run directory (``mechinfer pipeline --model problem.yaml --run
RUN``) whose train-inference stage has finished: its fine-tuned checkpoint
``RUN/train-inference/checkpoint`` and the problem's model stored with it. On the problem's
measurements, from the network's estimate (its time included, as in the report's
real-data table), one fit by each optimiser as ``mle.fit`` runs it for the refine stage
(BFGS with the Gauss-Newton initial inverse Hessian), warm (the first fit of each is not
timed), one torch and numba thread. The two are timed alternately ``--repeats`` times
(the machine is shared: a load change hits both) and the medians compared. Printed per
problem: each fit's exact PEtab log-likelihood, evaluations and median wall-clock, and
the ratio BFGS / trust region. ``--write`` writes bench/results/petab_refine_cpu.txt.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba is imported: one core

import platform
import time
from pathlib import Path

import numpy as np
import torch

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.fit import mle

METHODS = ("trust-region", "bfgs")


def refine_once(m, est, data, method: str) -> tuple[float, object]:
    tic = time.perf_counter()
    z = est.network_z(data["t"], data["channel"], data["value"])
    fit = mle.fit(m, data["t"], data["channel"], data["value"], z, method=method, hessian="gauss-newton")
    return time.perf_counter() - tic, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="pipeline run directories of PEtab problems")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "$ python bench/petab_refine.py " + " ".join(args.runs),
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, "
        f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}; load average before: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"{'problem':<26}{'optimiser':<14}{'log-likelihood':>15}{'reference':>11}{'evals':>7}{'ms median':>11}",
    ]
    print("\n".join(lines))
    for run in args.runs:
        est = mechinfer.load_estimator(str(Path(run) / "train-inference" / "checkpoint"))
        m = est.model  # the checkpoint's copy of the problem's model
        problem = baseline.petab_problem_of(m)
        data = baseline.real_data(m)
        if problem is None or data is None:
            raise SystemExit(f"{run}: model {m.name!r} is not a PEtab problem's")
        mle.warm_up(m, data["t"], data["channel"], data["value"])
        for method in METHODS:  # warm: compiled kernels loaded
            refine_once(m, est, data, method)
        seconds: dict[str, list[float]] = {k: [] for k in METHODS}
        fits = {}
        for _ in range(args.repeats):
            for method in METHODS:
                sec, fits[method] = refine_once(m, est, data, method)
                seconds[method].append(sec)
        block = []
        for method in METHODS:
            fit = fits[method]
            ll = float(problem.log_likelihood(fit.theta[0]))
            block.append(
                f"{m.name:<26}{method:<14}{ll:>15.3f}{problem.log_likelihood():>11.3f}"
                f"{int(fit.evaluations[0]):>7}{1e3 * np.median(seconds[method]):>11.1f}"
            )
        ratio = np.median(seconds["bfgs"]) / np.median(seconds["trust-region"])
        block.append(f"{m.name:<26}BFGS / trust region time: {ratio:.2f}x")
        print("\n".join(block))
        lines += block
    if args.write:
        path = Path(__file__).parent / "results" / "petab_refine_cpu.txt"
        path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
