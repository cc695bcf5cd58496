"""Batched simulate against a per-sample scipy LSODA loop, on the same E. coli draws.

    python bench/solver_speed.py [--batch 16384 ...] [--lsoda 300] [--device cuda]

The batched solver simulates ``--batch`` prior draws with their observation designs at
once (each size in turn, after one warm-up that compiles the step); LSODA (rtol 1e-6, the
SPEC's baseline) solves the first ``--lsoda`` of the same draws one by one, on the same
rate-law function. On the CPU both use one core (torch.set_num_threads(1)). Accuracy of
both is checked against Radau at rtol 1e-10 on the first ``--check`` draws, in units of
each channel's noise sigma. With ``--device cuda`` the batched solver runs on the GPU and
its values and gradients are also compared with the CPU's on the same draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mechinfer
from mechinfer.models.design import draw_experiments
from mechinfer.models.simulate import simulate_observed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import radau, scipy_solve


def lsoda(model, theta, t):
    out = scipy_solve(model, theta, t, "LSODA", rtol=1e-6)
    return out if out is not None else np.full((len(t), len(model.channels)), np.nan)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def worst_error(y, ref, sigma):
    return float(np.nanmax(np.abs(y - ref) / sigma))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--batch", type=int, nargs="+", default=[16384])
    parser.add_argument("--lsoda", type=int, default=300)
    parser.add_argument("--check", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--match-rtol",
        type=float,
        default=1e-4,
        help="a looser tolerance for the batched solver, to compare at LSODA's accuracy",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)

    m = mechinfer.get_model(args.model)
    d = draw_experiments(m, args.seed, np.arange(max(args.batch)))
    theta = torch.from_numpy(d["theta"]).to(dev)
    t = torch.from_numpy(d["t"]).to(dev)
    refs = [radau(m, d["theta"][i], d["t"][i]) for i in range(args.check)]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "one CPU core (torch threads = 1)"
    print(f"model {m.name}, batched solver on {where}")

    with torch.no_grad():
        _, compile_s = timed(lambda: simulate_observed(m, theta[:2048], t[:2048]))
    print(f"warm-up (compiles the step once per process): {compile_s:.1f} s")
    per_batched = {}
    for batch in args.batch:
        with torch.no_grad():
            (y, status), secs = timed(lambda b=batch: simulate_observed(m, theta[:b], t[:b]))
            (y_loose, _), secs_loose = timed(
                lambda b=batch: simulate_observed(m, theta[:b], t[:b], rtol=args.match_rtol, atol=args.match_rtol)
            )
        y, y_loose = y.cpu().numpy(), y_loose.cpu().numpy()
        err = max(worst_error(y[i], refs[i], m.sigma) for i in range(args.check))
        err_loose = max(worst_error(y_loose[i], refs[i], m.sigma) for i in range(args.check))
        per_batched[batch] = (secs / batch, secs_loose / batch)
        print(
            f"batched Rodas4, batch {batch}: rtol 1e-6 {secs / batch * 1e6:.1f} us/sample "
            f"(worst error {err:.1e} sigma, {int((status != 0).sum())} failed); "
            f"rtol {args.match_rtol:g} {secs_loose / batch * 1e6:.1f} us/sample (worst error {err_loose:.1e} sigma)"
        )

    y_lsoda, secs = timed(lambda: [lsoda(m, d["theta"][i], d["t"][i]) for i in range(args.lsoda)])
    per_lsoda = secs / args.lsoda
    err_lsoda = max(worst_error(y_lsoda[i], refs[i], m.sigma) for i in range(min(args.check, args.lsoda)))
    print(
        f"scipy LSODA rtol 1e-6, {args.lsoda} draws one by one on one CPU core: {per_lsoda * 1e6:.0f} us/sample "
        f"(worst error {err_lsoda:.1e} sigma)"
    )
    print(f"(errors: max over {args.check} draws against Radau rtol 1e-10, in units of the channel's noise sigma)")
    for batch, (same, loose) in per_batched.items():
        print(
            f"speed-up, batch {batch}: {per_lsoda / same:.1f}x at the same rtol 1e-6, "
            f"{per_lsoda / loose:.1f}x at matched accuracy (rtol {args.match_rtol:g})"
        )

    if dev.type != "cpu":
        n = min(args.check, 64)
        with torch.no_grad():
            y_dev, _ = simulate_observed(m, theta[:n], t[:n])
            y_cpu, _ = simulate_observed(m, theta[:n].cpu(), t[:n].cpu())
        print(
            f"{args.device} vs CPU values, {n} draws: max difference "
            f"{worst_error(y_dev.cpu().numpy(), y_cpu.numpy(), m.sigma):.1e} sigma"
        )
        grads = []
        for th, tt in ((theta[:4], t[:4]), (theta[:4].cpu(), t[:4].cpu())):
            x = th.clone().requires_grad_()
            out, _ = simulate_observed(m, x, tt)
            grads.append(torch.autograd.grad(out.sum(), x)[0].cpu())
        rel = ((grads[0] - grads[1]).abs() / (grads[1].abs() + 1e-8)).max().item()
        print(f"{args.device} vs CPU gradient d(sum y)/d theta, 4 draws: max relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
