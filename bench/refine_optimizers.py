"""Refinement optimisers compared from the same network starts: BFGS (Gauss-Newton H0)
against trust-region Gauss-Newton (issue 24).

    NUMBA_NUM_THREADS=1 python bench/refine_optimizers.py [--models mmk ecoli] [--cases 64] [--write]

Single-case refinement as ``est.refine`` runs it online: one case at a time, warm, one
torch thread, the network's estimate as the start, ``mle.fit(..., method=...)``. Per
optimiser: evaluations per case (BFGS: NLL + gradient by the adjoint, plus one for its
Gauss-Newton H0; trust region: residuals + Jacobian by forward sensitivities, not counting
its geodesic acceleration's residual-only probes, a plain solve each), wall time
per case (median, worst), the share of cases whose NLL is above the best either found by
more than 1e-3, and the share of parameters ending at |z| > 6. ``--write`` writes the
table to bench/results/refine_optimizers_cpu.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

import mechinfer
from mechinfer.data.samples import spec_test_set

METHODS = ("bfgs", "trust-region")


def refine_each(est, t, ch, v, z0, method: str) -> dict[str, np.ndarray]:
    """One case at a time: seconds, evaluations, NLL and z of each refinement."""
    seconds, evaluations, nll, z = [], [], [], []
    for i in range(len(t)):
        args = (t[i : i + 1], ch[i : i + 1], v[i : i + 1], z0[i : i + 1])
        start = time.perf_counter()
        fit = est.refine(*args, method=method)
        seconds.append(time.perf_counter() - start)
        evaluations.append(fit.evaluations[0])
        nll.append(fit.nll[0])
        z.append(fit.z[0])
    return {"seconds": np.array(seconds), "evaluations": np.array(evaluations), "nll": np.array(nll), "z": np.array(z)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmk", "ecoli"])
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "$ NUMBA_NUM_THREADS=1 python bench/refine_optimizers.py",
        f"machine: {platform.processor() or platform.machine()}, 1 torch thread, "
        f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}; "
        f"first {args.cases} SPEC test cases, single-case refinement from the network's estimate, warm",
    ]
    print("\n".join(lines))
    for name in args.models:
        est = mechinfer.load_estimator(name)
        m = est.model
        test = spec_test_set(m)
        test = {k: a[test["status"] == 0] for k, a in test.items()}
        t, ch, v = (test[k][: args.cases] for k in ("t", "channel", "value"))
        z0 = est.estimate_z(t, ch, v)
        for method in METHODS:  # warm: native code loaded, numba kernels compiled
            refine_each(est, t[:2], ch[:2], v[:2], z0[:2], method)
        runs = {method: refine_each(est, t, ch, v, z0, method) for method in METHODS}
        best = np.fmin(*(runs[k]["nll"] for k in METHODS))
        block = [
            f"\n== {name}: checkpoint {est.checkpoint_id}",
            f"{'optimiser':<14}{'evals median':>13}{'evals mean':>11}{'ms median':>10}{'ms worst':>9}"
            f"{'> best + 1e-3':>14}{'|z| > 6':>8}{'max |z|':>9}",
        ]
        for method, r in runs.items():
            worse = np.mean(~(r["nll"] <= best + 1e-3))
            block.append(
                f"{method:<14}{np.median(r['evaluations']):>13.0f}{r['evaluations'].mean():>11.1f}"
                f"{1e3 * np.median(r['seconds']):>10.1f}{1e3 * r['seconds'].max():>9.1f}"
                f"{worse:>14.0%}{np.mean(np.abs(r['z']) > 6):>8.0%}{np.abs(r['z']).max():>9.1f}"
            )
        print("\n".join(block))
        lines += block
    if args.write:
        path = os.path.join(os.path.dirname(__file__), "results", "refine_optimizers_cpu.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
