"""Training-step throughput of the inference network on CPU and on a GPU, same code.

    python bench/train_speed.py --model ecoli --device cuda --steps 300

Runs the library's training steps (mechinfer.learn.losses, which the Ray Train loop calls)
in this process: ``--steps`` steps through the proxy and ``--finetune-steps`` through the
solver, on the CPU and on ``--device``, on the same simulated batch data. Prints samples/s.
"""

from __future__ import annotations

import argparse
import time

import torch

import mechinfer
from mechinfer.data.samples import simulate_chunk
from mechinfer.learn import losses as training
from mechinfer.learn import networks


def run(model, data, device, steps, finetune_steps, batch_size, width):
    torch.manual_seed(0)
    proxy = networks.build(networks.default_config(model, "proxy", width=width)).to(device).requires_grad_(False)
    net = networks.build(networks.default_config(model, "inference", width=width)).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    n = len(data["z"])
    out = {}
    for stage, count in (("proxy", steps), ("model", finetune_steps)):
        if count == 0:
            continue
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for i in range(count + 2):  # two warm-up steps
            if i == 2:
                sync()
                start = time.perf_counter()
            idx = torch.randint(0, n, (batch_size,), generator=gen)
            batch = {k: v[idx].to(device) for k, v in data.items()}
            loss = training.inference_loss(model, net, batch, through=stage, proxy=proxy, min_obs=3, generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()
        out[stage] = count * batch_size / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecoli")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()
    m = mechinfer.get_model(args.model)
    cols = simulate_chunk(m, 0, 0, args.samples, compile=False)
    ok = cols["status"] == 0
    data = {
        "z": torch.from_numpy(cols["z"][ok]).float(),
        "t": torch.from_numpy(cols["t"][ok]).float(),
        "channel": torch.from_numpy(cols["channel"][ok]).long(),
        "value": torch.from_numpy(cols["value"][ok]).float(),
        "clean": torch.from_numpy(cols["clean"][ok]).float(),
    }
    results = {}
    for dev in ("cpu", args.device):
        d = torch.device(dev)
        name = torch.cuda.get_device_name(d) if d.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        results[dev] = run(m, data, d, args.steps, args.finetune_steps, args.batch_size, args.width)
        print(
            f"{name}: through the proxy {results[dev]['proxy']:.0f} samples/s"
            + (f"; through the solver {results[dev]['model']:.0f} samples/s" if "model" in results[dev] else "")
        )
        if dev == args.device == "cpu":
            break
    if args.device != "cpu":
        for stage in results["cpu"]:
            print(
                f"{args.device} / cpu, through the {'proxy' if stage == 'proxy' else 'solver'}: "
                f"{results[args.device][stage] / results['cpu'][stage]:.1f}x"
            )


if __name__ == "__main__":
    main()
