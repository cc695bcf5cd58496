"""Inference cost per sample: the Deep Set estimator at batch 1 and 1024, against one
BFGS-style evaluation (simulate + gradient of the NLL through the solver) in the same run.

    python bench/inference_speed.py --model ecoli [--checkpoint DIR] [--device cuda]

Uses the model's SPEC test set as input. On the CPU torch uses its default thread count
(printed); the BFGS-style evaluation is one sample at a time, as one optimiser step is.
"""

from __future__ import annotations

import argparse
import time

import torch

import mechinfer
from mechinfer.data.samples import spec_test_set
from mechinfer.models import likelihood, priors


def per_sample(fn, n_samples: int, repeats: int, sync) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / (repeats * n_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bfgs-evals", type=int, default=20)
    args = parser.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    est = mechinfer.load_estimator(args.checkpoint or args.model)
    m = est.model
    net = est.net.to(dev)
    test = spec_test_set(m)
    t = torch.from_numpy(test["t"]).float().to(dev)
    ch = torch.from_numpy(test["channel"]).long().to(dev)
    v = torch.from_numpy(test["value"]).float().to(dev)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {m.name}, checkpoint {est.checkpoint_id}, network on {where}")
    with torch.no_grad():
        one = per_sample(lambda: net(t[:1], ch[:1], v[:1]), 1, 200, sync)
        full = per_sample(lambda: net(t, ch, v), len(t), 20, sync)
    print(f"Deep Set, batch 1: {one * 1e6:.1f} us/sample")
    print(f"Deep Set, batch {len(t)}: {full * 1e6:.2f} us/sample")

    z = torch.from_numpy(test["z"][:1]).double()
    tt, cc, vv = (torch.from_numpy(test[k][:1]) for k in ("t", "channel", "value"))

    def bfgs_eval():
        zg = z.clone().requires_grad_()
        loss = likelihood.nll(m, priors.from_z(m.priors, zg), tt.double(), cc, vv.double(), compile=False)
        torch.autograd.grad(loss.sum(), zg)

    evals = per_sample(bfgs_eval, 1, args.bfgs_evals, lambda: None)
    print(f"one BFGS-style evaluation (simulate + gradient, CPU, batch 1): {evals * 1e6:.0f} us/sample")
    print(f"ratio: one network estimate at batch {len(t)} costs 1/{evals / full:.0f} of one BFGS evaluation")


if __name__ == "__main__":
    main()
