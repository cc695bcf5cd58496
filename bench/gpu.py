"""The GPU checks in one script: the same measurements on a CUDA device and on this
machine's CPUs, then the ratios and Table 1's GPU column.

    # on the CPU machine: the test rows and network starts both sides use, and the CPU side
    python bench/gpu.py inputs --out .gpu
    python bench/gpu.py measure --device cpu --inputs .gpu --out bench/results/gpu_cpu.json
    # on the device machine (no Ray there: PYTHONPATH=platform; MECHINFER_NATIVE=0 there,
    # so its CPU-side test references run the torch steps and nothing compiles native code)
    PYTHONPATH=platform python bench/gpu.py measure --device cuda --inputs .gpu --out $OUT/gpu.json
    # then, here
    python bench/gpu.py compare bench/results/gpu_cpu.json bench/results/gpu_cuda.json \
        --write bench/results/gpu.md --timings results/gpu_timings.json

What ``measure`` times, each part on its own, its errors recorded rather than fatal:
- solver: E. coli prior draws at their designs, ``--solver-batch`` at once (the GPU's
  batched torch Rodas4), or one core of the native solver on the CPU (a
  ``--cpu-solver-batch`` subset: its cost per sample does not depend on the batch);
- refine: the first ``--cases`` SPEC test cases of each model from the network's estimate,
  with BFGS (Gauss-Newton H0) and the trust region, as Table 1's "Deep Inference + ..."
  rows fit them (:func:`mechinfer.evaluate.baseline.fit_network_starts`): on the GPU one
  batch, on the CPU split over ``--cpu-workers`` processes of the native solver;
- finetune: training steps through the solver (and through the proxy), samples per second
  (:mod:`bench.train_speed`'s loop, the library's losses);
- network: the networks' time per sample at the report's batches
  (:func:`mechinfer.evaluate.report.network_seconds`).
``compare`` prints GPU against CPU per part, and writes the per-sample GPU times of Table
1's rows it measured, with the device's name, for ``jobs/evaluate.py --gpu-timings``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mechinfer
from mechinfer.evaluate import baseline, report
from mechinfer.fit import mle
from mechinfer.fit.schedule import FitStatus
from mechinfer.machine import machine
from mechinfer.models.design import draw_experiments
from mechinfer.models.simulate import simulate_observed

MODELS = ("mmk", "ecoli")
OPTIMIZERS = ("trust-region", "bfgs")
ROW = {"bfgs": "Deep Inference + BFGS", "trust-region": "Deep Inference + trust-region"}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_inputs(out: Path, cases: int) -> None:
    """The first ``cases`` SPEC test rows of each model and the fine-tuned network's z
    there, so that both sides fit the same problems from the same starts."""
    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        rows, _ = baseline.load_test_set(name, None, cases)
        est = mechinfer.load_estimator(name)
        z0 = est.estimate_z(rows["t"], rows["channel"], rows["value"])
        keep = ("t", "channel", "value", "clean", "theta", "status")
        tmp = out / f"{name}.tmp.npz"
        np.savez(tmp, z0=z0, **{k: rows[k] for k in keep})
        os.replace(tmp, out / f"{name}.npz")
        print(f"{name}: {cases} test rows and network starts -> {out / f'{name}.npz'}")


def solver_part(dev: torch.device, batch: int, cpu_batch: int, torch_steps: bool) -> dict:
    m = mechinfer.get_model("ecoli")
    n = batch if torch_steps else cpu_batch
    d = draw_experiments(m, 1, np.arange(n))
    theta, t = torch.from_numpy(d["theta"]).to(dev), torch.from_numpy(d["t"]).to(dev)
    backend = {"backend": "torch" if torch_steps else "native"}
    with torch.no_grad():
        simulate_observed(m, theta[:2048], t[:2048], **backend)  # warm-up (native: loads its module)
        _sync(dev)
        start = time.perf_counter()
        y, status = simulate_observed(m, theta, t, **backend)
        _sync(dev)
        secs = time.perf_counter() - start
    y = y.cpu().numpy()
    return {
        "batch": n,
        "backend": backend["backend"],
        "us_per_sample": secs / n * 1e6,
        "failed": int((status.cpu().numpy() != 0).sum()),
        "mean_first_64": float(np.nanmean(y[:64])),
    }


def _fit_rows(
    name: str, inputs: Path, lo: int, hi: int, optimizer: str, device: str | None, budget_s: float | None = None
):
    """Deep Inference + ``optimizer`` on rows [lo, hi) of the inputs: (wall s, Fit).
    ``budget_s``: a deadline for the torch steps' fit (its unfinished problems end with
    status DEADLINE, counted in the output)."""
    torch.set_num_threads(1)
    m = mechinfer.get_model(name)
    d = np.load(inputs / f"{name}.npz")
    sl = slice(lo, hi)
    args = (d["t"][sl], d["channel"][sl], d["value"][sl], d["z0"][sl])
    if device is None:  # the CPU: Table 1's own call (native solver)
        baseline.fit_network_starts(m, *(a[:2] for a in args), mle.MAX_ITER, optimizer)  # warm
        start = time.perf_counter()
        fit = baseline.fit_network_starts(m, *args, mle.MAX_ITER, optimizer)
        return time.perf_counter() - start, fit
    options = {"hessian": "gauss-newton", "method": optimizer, "device": device}
    mle.fit(m, *(a[:2] for a in args), max_iter=1, **options)  # warm-up: the CUDA context, the first kernels
    start = time.perf_counter()
    deadline = None if budget_s is None else time.time() + budget_s
    fit = mle.fit(m, *args, max_iter=mle.MAX_ITER, deadline=deadline, **options)
    _sync(torch.device(device))
    return time.perf_counter() - start, fit


def refine_part(
    name: str, dev: torch.device, inputs: Path, cases: int, workers: int, torch_steps: bool, budget_s: float
) -> dict:
    out = {}
    for optimizer in OPTIMIZERS:
        if torch_steps:
            wall, fit = _fit_rows(name, inputs, 0, cases, optimizer, str(dev), budget_s)
            fits = [fit]
        else:
            bounds = np.linspace(0, cases, workers + 1).astype(int)
            with ProcessPoolExecutor(workers) as pool:
                # each worker warms itself before its timed fit; the wall-clock is the
                # slowest worker's fit (the processes run side by side)
                jobs = [
                    pool.submit(_fit_rows, name, inputs, int(a), int(b), optimizer, None)
                    for a, b in itertools.pairwise(bounds)
                ]
                parts = [j.result() for j in jobs]
            wall = max(p[0] for p in parts)
            fits = [p[1] for p in parts]
        nll = np.concatenate([f.nll for f in fits])
        out[optimizer] = {
            "cases": cases,
            "wall_s": wall,
            "s_per_case": wall / cases,
            "evaluations_mean": float(np.mean(np.concatenate([f.evaluations for f in fits]))),
            "nll": nll.tolist(),
            "status_counts": {
                str(k): int(v) for k, v in zip(*np.unique(np.concatenate([f.status for f in fits]), return_counts=True))
            },
        }
        print(f"  {name} {optimizer}: {cases} cases in {wall:.2f} s", flush=True)
    return out


def finetune_part(dev: torch.device, inputs: Path, steps: int, finetune_steps: int) -> dict:
    import train_speed

    m = mechinfer.get_model("ecoli")
    d = np.load(inputs / "ecoli.npz")
    ok = d["status"] == 0
    data = {
        "z": torch.from_numpy(m.to_z(d["theta"][ok])).float(),
        "t": torch.from_numpy(np.nan_to_num(d["t"][ok])).float(),
        "channel": torch.from_numpy(d["channel"][ok]).long(),
        "value": torch.from_numpy(d["value"][ok]).float(),
        "clean": torch.from_numpy(d["clean"][ok]).float(),
    }
    rates = train_speed.run(m, data, dev, steps, finetune_steps, 256, 192)
    return {"samples_per_s": rates, "batch_size": 256, "steps": steps, "finetune_steps": finetune_steps}


def network_part(name: str, dev: torch.device, inputs: Path) -> dict:
    d = np.load(inputs / f"{name}.npz")
    est_ft = mechinfer.load_estimator(name)
    est_net = mechinfer.load_estimator(os.path.join(report.shipped_checkpoint(name), "through-proxy"))
    return {
        method: dict(
            zip(("s_per_sample", "batch"), report.network_seconds(est, d["t"], d["channel"], d["value"], str(dev)))
        )
        for method, est in (("Deep Inference", est_net), ("Deep Inference + MM", est_ft))
    }


def measure(args) -> None:
    dev = torch.device(args.device)
    torch_steps = dev.type != "cpu" or args.torch_steps
    if dev.type == "cpu":
        torch.set_num_threads(args.cpu_workers)
    result: dict = {
        "device": args.device,
        "torch_steps": torch_steps,
        "machine": machine(),
        "errors": {},
        "seconds": {},
    }
    inputs = Path(args.inputs)
    parts = {
        "solver": lambda: solver_part(dev, args.solver_batch, args.cpu_solver_batch, torch_steps),
        "finetune": lambda: finetune_part(dev, inputs, args.steps, args.finetune_steps),
        "network": lambda: {name: network_part(name, dev, inputs) for name in MODELS},
        "refine": lambda: {
            name: refine_part(name, dev, inputs, args.cases, args.cpu_workers, torch_steps, args.refine_budget_s)
            for name in MODELS
        },
    }
    for part in args.parts:
        print(f"{part} ...", flush=True)
        start = time.perf_counter()
        try:
            result[part] = parts[part]()
        except Exception:
            result["errors"][part] = traceback.format_exc()
            print(result["errors"][part], flush=True)
        result["seconds"][part] = time.perf_counter() - start
        print(f"{part}: {result['seconds'][part]:.1f} s", flush=True)
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)


def compare(args) -> None:
    cpu, gpu = (json.loads(Path(p).read_text()) for p in (args.cpu, args.gpu))
    gpu_name = gpu["machine"]["gpu"]
    cpu_name = f"{cpu['machine']['cpu']}"
    lines = [f"GPU: {gpu_name} (torch {gpu['machine']['torch']}); CPU: {cpu_name}, {cpu['machine']['cpu_count']} CPUs"]
    if "solver" in cpu and "solver" in gpu:
        c, g = cpu["solver"], gpu["solver"]
        lines.append(
            f"solver, E. coli prior draws: GPU torch Rodas4 at batch {g['batch']} {g['us_per_sample']:.2f} us/sample "
            f"({g['failed']} failed); native on one CPU core {c['us_per_sample']:.1f} us/sample "
            f"(batch {c['batch']}, {c['failed']} failed): "
            f"the GPU {c['us_per_sample'] / g['us_per_sample']:.1f}x per sample"
        )
    timings: dict = {}
    for name in MODELS:
        for opt in OPTIMIZERS:
            try:
                c, g = cpu["refine"][name][opt], gpu["refine"][name][opt]
            except KeyError:
                continue
            if g["cases"] != c["cases"]:
                lines.append(f"refine {name} {opt}: GPU fitted {g['cases']} cases, CPU {c['cases']}: not compared")
                continue
            gap = np.asarray(g["nll"]) - np.asarray(c["nll"])
            lines.append(
                f"refine {name} {opt}, {g['cases']} cases from the network's starts: GPU {g['wall_s']:.2f} s "
                f"({g['evaluations_mean']:.1f} evaluations a case, statuses {g['status_counts']}), "
                f"{cpu['machine']['cpu_count']} CPUs {c['wall_s']:.2f} s ({c['evaluations_mean']:.1f}): "
                f"the GPU {c['wall_s'] / g['wall_s']:.2f}x; NLL GPU - CPU median {np.nanmedian(gap):.2e}, "
                f"{int(np.sum(gap > 1e-3))} cases worse by > 1e-3, {int(np.sum(gap < -1e-3))} better"
            )
            net = gpu.get("network", {}).get(name, {}).get("Deep Inference + MM")
            unfinished = g["status_counts"].get(str(int(FitStatus.DEADLINE)), 0)
            if unfinished:
                lines.append(f"  ({unfinished} of {g['cases']} GPU fits were stopped by their deadline: a lower bound)")
            elif net:
                timings.setdefault(name, {})[ROW[opt]] = net["s_per_sample"] + g["s_per_case"]
        for method, g in gpu.get("network", {}).get(name, {}).items():
            c = cpu.get("network", {}).get(name, {}).get(method)
            timings.setdefault(name, {})[method] = g["s_per_sample"]
            if c:
                lines.append(
                    f"network {name} {method}: GPU {g['s_per_sample'] * 1e6:.2f} us/sample (batch {g['batch']}), "
                    f"CPU {c['s_per_sample'] * 1e6:.2f} us/sample (batch {c['batch']})"
                )
    if "finetune" in cpu and "finetune" in gpu:
        c, g = cpu["finetune"]["samples_per_s"], gpu["finetune"]["samples_per_s"]
        for stage, what in (("proxy", "through the proxy"), ("model", "through the solver (fine-tuning)")):
            if stage in c and stage in g:
                lines.append(
                    f"training {what}, E. coli, batch 256: GPU {g[stage]:.0f} samples/s, "
                    f"CPU {c[stage]:.0f} samples/s: the GPU {g[stage] / c[stage]:.1f}x"
                )
    for side, res in (("CPU", cpu), ("GPU", gpu)):
        for part, err in res["errors"].items():
            lines.append(f"{side} {part} failed: {err.strip().splitlines()[-1]}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.write:
        Path(args.write).write_text(f"$ python bench/gpu.py compare {args.cpu} {args.gpu}\n" + text)
    if args.timings:
        record = {"device": gpu_name, "torch": gpu["machine"]["torch"], "command": "bench/gpu.py", "rows": timings}
        tmp = f"{args.timings}.tmp"
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, args.timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("--out", default=".gpu")
    p.add_argument("--cases", type=int, default=1024)
    p = sub.add_parser("measure")
    p.add_argument("--device", default="cuda")
    p.add_argument("--inputs", default=".gpu")
    p.add_argument("--out", required=True)
    p.add_argument("--parts", nargs="+", default=["solver", "finetune", "network", "refine"])
    p.add_argument("--solver-batch", type=int, default=262_144)
    p.add_argument("--cpu-solver-batch", type=int, default=8192)
    p.add_argument("--cases", type=int, default=1024)
    p.add_argument("--cpu-workers", type=int, default=2)
    p.add_argument("--refine-budget-s", type=float, default=90.0, help="a deadline for each fit of the torch steps")
    p.add_argument(
        "--torch-steps", action="store_true", help="on the CPU, run the GPU's code path (a dry run of the script)"
    )
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--finetune-steps", type=int, default=5)
    p = sub.add_parser("compare")
    p.add_argument("cpu")
    p.add_argument("gpu")
    p.add_argument("--write")
    p.add_argument("--timings")
    args = parser.parse_args()
    {
        "inputs": lambda: make_inputs(Path(args.out), args.cases),
        "measure": lambda: measure(args),
        "compare": lambda: compare(args),
    }[args.command]()


if __name__ == "__main__":
    main()
