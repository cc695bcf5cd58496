"""mechinfer's batched BFGS against scipy's BFGS on the same problems: NLL + gradient
evaluations, iterations and the minima reached, from the same starts, with the same
exact gradients (the native solver's adjoint) and scipy's default tolerance (gtol 1e-5).

    python bench/bfgs_vs_scipy.py [--models ecoli mmk] [--cases 32]

Why: Table 1's "Deep Inference + BFGS" against "BFGS, 8 starts" is, per evaluation, a
ratio of evaluation counts. This shows whether those counts are a property of BFGS on
these problems or of this implementation. Network starts use the Gauss-Newton initial
inverse Hessian H0 = L L^T; scipy has no H0 argument, so it minimises over u with
z = z0 + L u (BFGS from H0 = I in u is BFGS from H0 in z). Prior starts use H0 = I in both.
mechinfer counts the Gauss-Newton Jacobian as one evaluation; scipy's count has no such term.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from scipy.optimize import minimize

import mechinfer
from mechinfer.data.samples import spec_test_set
from mechinfer.fit import mle


def scipy_fit(fun, h0, i: int, z0: np.ndarray, gauss_newton: bool) -> tuple[int, int, float]:
    """(evaluations, iterations, NLL) of scipy's BFGS for problem i from z0."""
    rows = torch.tensor([i])
    L = np.linalg.cholesky(h0(torch.from_numpy(z0[None]), rows)[0].numpy()) if gauss_newton else np.eye(len(z0))

    def in_u(u):
        value, grad = fun(torch.from_numpy((z0 + L @ u)[None]), rows)
        return float(value[0]), L.T @ grad[0].numpy().astype(np.float64)

    res = minimize(in_u, np.zeros(len(z0)), jac=True, method="BFGS", options={"gtol": 1e-5, "maxiter": 1024})
    return res.nfev, res.nit, res.fun


def scipy_fits(fun, h0, starts: np.ndarray, gauss_newton: bool) -> np.ndarray:
    """(evaluations, iterations, NLL) of scipy's BFGS from each start, one row each."""
    return np.array([scipy_fit(fun, h0, i, z0, gauss_newton) for i, z0 in enumerate(starts)], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ecoli", "mmk"])
    parser.add_argument("--cases", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, 1 torch thread; first {args.cases} SPEC test cases")
    for name in args.models:
        est = mechinfer.load_estimator(name)
        m = est.model
        test = spec_test_set(m)
        test = {k: a[test["status"] == 0] for k, a in test.items()}
        t, ch, v = (test[k][: args.cases] for k in ("t", "channel", "value"))
        options = mle._fit_options({})
        fun = mle.objective(m, t, ch, v, **options)
        h0 = mle.gauss_newton_h0(m, t, ch, v, **options)
        starts = {
            "network estimate (Gauss-Newton H0)": (est.estimate_z(t, ch, v), True),
            "prior draw (H0 = I)": (mle.prior_starts(m, np.arange(args.cases), 1, 0)[:, 0], False),
        }
        print(f"\n== {name}")
        for label, (z0, gauss_newton) in starts.items():
            ours = mle.fit(m, t, ch, v, z0, hessian="gauss-newton" if gauss_newton else "identity")
            theirs = scipy_fits(fun, h0, np.asarray(z0, dtype=np.float64), gauss_newton)
            diff = theirs[:, 2] - ours.nll
            print(
                f"{label}: evaluations mean mechinfer {ours.evaluations.mean():.1f} / scipy {theirs[:, 0].mean():.1f}, "
                f"iterations {ours.iterations.mean():.1f} / {theirs[:, 1].mean():.1f}; "
                f"NLL scipy - mechinfer mean {np.nanmean(diff):+.4f}, median {np.nanmedian(diff):+.2e}, "
                f"range [{np.nanmin(diff):+.3f}, {np.nanmax(diff):+.3f}]"
            )


if __name__ == "__main__":
    main()
