"""Exact NLL gradients through the solver: the native solver (discrete adjoint,
compiled per model) against autograd through the torch steps, measured in one run.

    python bench/gradient_speed.py [--models mmk ecoli] [--cases 64] [--torch-cases 2]

One torch thread, the SPEC test set as input, each figure after a warm-up:
- one NLL + gradient evaluation at batch 1 and per sample at batch 256 (BFGS in z space
  evaluates exactly this), native against torch eager, and their ratio;
- single-case refinement (``est.refine`` on one case at a time, warm, the network's
  estimate as the start, as ``est.estimate(refine=True)`` and the Serve refine stage run
  it) over the first ``--cases`` test cases with the native solver: median and worst;
  the torch steps on the first ``--torch-cases`` of them (seconds each for E. coli), with
  the ratio of the two on those same cases;
- fine-tuning through the solver: samples/s of one training step (the NLL through the
  mechanistic model of the network's estimates, forward and backward) at batch 256.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import mechinfer
from mechinfer.data.samples import spec_test_set
from mechinfer.fit import mle
from mechinfer.learn import losses


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (loads or compiles the native code once per process)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def evaluation(model, test, n: int, backend: str, repeats: int) -> float:
    """Seconds per sample of one NLL + gradient evaluation of n sets."""
    rows = torch.arange(n)
    fun = mle.objective(model, test["t"][:n], test["channel"][:n], test["value"][:n], backend=backend, compile=False)
    z = torch.from_numpy(test["z"][:n]).double() * 0.9  # off the truth, where the gradient is not ~0
    return timed(lambda: fun(z, rows), repeats) / n


def refinements(est, test, cases, backend: str) -> np.ndarray:
    """Seconds of each single-case refinement, one case at a time."""
    out = []
    for i in cases:
        t, ch, v = (test[k][i : i + 1] for k in ("t", "channel", "value"))
        z = est.estimate_z(t, ch, v)
        start = time.perf_counter()
        est.refine(t, ch, v, z, backend=backend, compile=False)
        out.append(time.perf_counter() - start)
    return np.array(out)


def finetune_rate(est, test, backend: str, n: int = 256) -> float:
    """Samples per second of one fine-tuning step through the solver (forward + backward)."""
    batch = {
        "t": torch.from_numpy(test["t"][:n]).float(),
        "channel": torch.from_numpy(test["channel"][:n]).long(),
        "value": torch.from_numpy(test["value"][:n]).float(),
        "z": torch.from_numpy(test["z"][:n]).float(),
    }

    def step():
        est.net.zero_grad()
        loss = losses.inference_loss(
            est.model, est.net, batch, through="model", solver_options={"backend": backend, "compile": False}
        )
        loss.backward()

    return n / timed(step, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmk", "ecoli"])
    parser.add_argument("--cases", type=int, default=64, help="single-case refinements with the native solver")
    parser.add_argument("--torch-cases", type=int, default=2, help="of those, how many also with the torch steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, 1 torch thread, torch {torch.__version__}")
    for name in args.models:
        est = mechinfer.load_estimator(name)
        m = est.model
        test = spec_test_set(m)
        ok = np.where(test["status"] == 0)[0]
        test = {k: v[ok] for k, v in test.items()}
        print(f"\n== {name}: checkpoint {est.checkpoint_id}")
        for n in (1, 256):
            native = evaluation(m, test, n, "native", 200 if n == 1 else 3)
            slow = evaluation(m, test, n, "torch", 3 if n == 1 else 1)
            print(
                f"NLL + gradient, batch {n}: native {native * 1e3:.3f} ms/sample, torch eager "
                f"{slow * 1e3:.3f} ms/sample, ratio {slow / native:.0f}x"
            )
        cases = range(min(args.cases, len(test["t"])))
        refinements(est, test, [0], "native")  # warm-up
        native = refinements(est, test, cases, "native")
        print(
            f"single-case refinement, native, first {len(native)} test cases: median {np.median(native) * 1e3:.1f} ms, "
            f"worst {native.max() * 1e3:.1f} ms"
        )
        if args.torch_cases:
            few = range(min(args.torch_cases, len(native)))
            slow = refinements(est, test, few, "torch")
            print(
                f"single-case refinement, torch eager, first {len(slow)} cases: median {np.median(slow) * 1e3:.1f} ms "
                f"(native on the same: {np.median(native[: len(slow)]) * 1e3:.1f} ms), "
                f"ratio {slow.sum() / native[: len(slow)].sum():.0f}x"
            )
        native_rate = finetune_rate(est, test, "native")
        torch_rate = finetune_rate(est, test, "torch")
        print(
            f"fine-tuning through the solver, batch 256: native {native_rate:.0f} samples/s, torch eager "
            f"{torch_rate:.0f} samples/s, ratio {native_rate / torch_rate:.0f}x"
        )


if __name__ == "__main__":
    main()
