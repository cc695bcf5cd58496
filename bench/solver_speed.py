"""Batched simulate against a per-sample scipy LSODA loop, on the same E. coli draws.

    python bench/solver_speed.py [--batch 16384] [--lsoda 300]

Both run on one core in this process (torch.set_num_threads(1)). The batched solver
simulates ``--batch`` prior draws with their observation designs at once; LSODA
(rtol 1e-6, the SPEC's baseline) solves the first ``--lsoda`` of the same draws one by
one, on the same rate-law function. Accuracy of both is checked against Radau at rtol
1e-10 on the first ``--check`` draws, in units of each channel's noise sigma.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.integrate import solve_ivp

import mechinfer
from mechinfer.design import draw_experiments
from mechinfer.simulate import simulate_observed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import radau  # noqa: E402


def lsoda(model, theta, t):
    p = SimpleNamespace(**dict(zip(model.parameter_names, theta.tolist())))
    c = SimpleNamespace(**model.constants)

    def f(_, y):
        d = model.rates(SimpleNamespace(**dict(zip(model.states, y.tolist()))), p, c)
        return [d[name] for name in model.states]

    y0 = model.initial_state(torch.from_numpy(theta)).numpy()
    sol = solve_ivp(f, (0.0, float(t[-1])), y0, method="LSODA", t_eval=t, rtol=1e-6)
    return sol.y.T[:, list(model.channel_states)] if sol.success else np.full((len(t), len(model.channels)), np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--lsoda", type=int, default=300)
    parser.add_argument("--check", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    m = mechinfer.get_model(args.model)
    d = draw_experiments(m, args.seed, np.arange(args.batch))
    theta, t = torch.from_numpy(d["theta"]), torch.from_numpy(d["t"])
    with torch.no_grad():
        simulate_observed(m, theta[:64], t[:64])  # warm-up
        start = time.perf_counter()
        y, status = simulate_observed(m, theta, t)
        batched = (time.perf_counter() - start) / args.batch

    start = time.perf_counter()
    y_lsoda = [lsoda(m, d["theta"][i], d["t"][i]) for i in range(args.lsoda)]
    per_lsoda = (time.perf_counter() - start) / args.lsoda

    err_ours, err_lsoda = 0.0, 0.0
    for i in range(args.check):
        ref = radau(m, d["theta"][i], d["t"][i])
        err_ours = max(err_ours, float(np.nanmax(np.abs(y[i].numpy() - ref) / m.sigma)))
        err_lsoda = max(err_lsoda, float(np.nanmax(np.abs(y_lsoda[i] - ref) / m.sigma)))

    print(f"model {m.name}, one core (torch threads = 1)")
    print(f"batched Rodas4, batch {args.batch}: {batched * 1e6:.0f} us/sample, {int((status != 0).sum())} failed")
    print(f"scipy LSODA rtol 1e-6, {args.lsoda} draws one by one: {per_lsoda * 1e6:.0f} us/sample")
    print(f"worst error vs Radau rtol 1e-10 on {args.check} draws (x noise sigma): "
          f"batched {err_ours:.1e}, LSODA {err_lsoda:.1e}")
    print(f"speed-up: {per_lsoda / batched:.1f}x")


if __name__ == "__main__":
    main()
