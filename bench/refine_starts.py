"""Refine starts on a pipeline run's simulated test set: the refine stage from the
network's estimate alone against the same with draws of its Laplace approximation as
further starts (``est.infer(refine=True, starts=k)``), beside the run's multistart rows.

    python bench/refine_starts.py RUN [RUN ...] [--starts 1 2 4 8] [--limit N] [--write]

Each RUN is a pipeline run directory (``mechinfer pipeline --model problem.yaml --run
RUN``) whose evaluate stage has finished. On the test samples of its Table 1 (the
baseline's, the first ``--limit`` of them), the fine-tuned network's estimates are
refined by :func:`mechinfer.estimate.refine.polish` with each number of starts, one batch
of all the samples, one torch and numba thread. Printed per problem and number of starts:
R2 (SPEC 4, in units of each sample's true noise scale, as Table 1 computes it), its
difference from the best multistart row of the run's Table 1 (computed on all its
samples: with ``--limit`` the two are not on the same samples), wall-clock per sample and
its ratio to one start's, and the samples whose NLL the starts lowered by more than 0.5
against one start. ``--write`` writes bench/results/refine_starts_cpu.txt.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba is imported: one core

import platform
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import torch

import mechinfer
from mechinfer import storage
from mechinfer.estimate import refine
from mechinfer.evaluate import baseline, report
from mechinfer.models import likelihood
from mechinfer.models.sources import model_from_record


def best_multistart(run: Path, model: str) -> tuple[str, float]:
    """The run's Table 1 multistart row (k prior starts) of the highest R2."""
    table = pd.read_csv(run / "evaluate" / "table1.csv")
    rows = table[(table["model"] == model) & table["method"].str.contains(r", \d+ starts?$", regex=True)]
    best = rows.loc[rows["R2"].idxmax()]
    return str(best["method"]), float(best["R2"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="pipeline run directories")
    parser.add_argument("--starts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--limit", type=int, default=None, help="the first N test samples of Table 1")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    starts = sorted(set(args.starts) | {1})
    lines = [
        "$ python bench/refine_starts.py "
        + " ".join(args.runs)
        + f" --starts {' '.join(map(str, starts))}"
        + (f" --limit {args.limit}" if args.limit else ""),
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread; "
        "load average before: " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"{'problem':<26}{'starts':>7}{'samples':>8}{'R2':>10}{'- best multistart':>19}"
        f"{'s / sample':>12}{'x 1 start':>10}{'NLL lower > 0.5':>17}",
    ]
    print("\n".join(lines))
    for run_dir in args.runs:
        run = Path(run_dir)
        location = str(run / "baseline")
        manifest = storage.read_manifest(location, what="baseline", kind="baseline")
        m = model_from_record(manifest)
        est = mechinfer.load_estimator(str(run / "train-inference" / "checkpoint"))
        rows = report._test_rows(m, manifest, pq.read_table(f"{location}/{baseline.MULTISTART}"))
        n = len(rows["sample_id"]) if args.limit is None else min(args.limit, len(rows["sample_id"]))
        t, ch, x = (rows[k][:n] for k in ("t", "channel", "value"))
        sigma = report.true_noise_scale(m, rows["theta"][:n], t, ch)
        z = est.network_z(t, ch, x)
        top, top_r2 = best_multistart(run, m.name)
        refine.polish(m, t[:1], ch[:1], x[:1], z[:1], max_iter=1)  # not timed: loads the solver
        block, nll_one, sec_one = [], None, None
        for k in starts:
            tic = time.perf_counter()
            fit = refine.polish(m, t, ch, x, z, starts=k)
            sec = (time.perf_counter() - tic) / n
            r2 = likelihood.r2(m, report.predict(m, m.from_z(fit.z), t, ch), ch, x, sigma=sigma, n_boot=10).value
            if k == 1:
                nll_one, sec_one = fit.nll, sec
            lower = int((nll_one - fit.nll > 0.5).sum())
            block.append(
                f"{m.name:<26}{k:>7}{n:>8}{r2:>10.5f}{r2 - top_r2:>+19.5f}{sec:>12.3f}{sec / sec_one:>10.1f}{lower:>17}"
            )
            print(block[-1], flush=True)
        block.append(f"{m.name:<26}best multistart row of Table 1: {top}, R2 {top_r2:.5f}")
        print(block[-1])
        lines += block
    if args.write:
        path = Path(__file__).parent / "results" / "refine_starts_cpu.txt"
        path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
