"""Load on the Serve application: N concurrent clients for M seconds against a local
Serve, throughput and p50/p99 latency, without and with refine, beside the in-process
``est.estimate`` cost measured in the same run.

    python bench/serve_load.py --model mmk --clients 32 --seconds 20

Each client sends one observation set (a SPEC test sample) per request and waits for
the answer before sending the next. Starts its own Ray and Serve, and stops them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal failures
        async with aiohttp.ClientSession() as session:
            i = k
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += clients
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1

    start = time.perf_counter()
    await asyncio.gather(*[client(k) for k in range(clients)])
    return latencies, failures, time.perf_counter() - start


def _report(what: str, latencies: list[float], failures: int, wall: float) -> str:
    lat = np.array(latencies) * 1e3
    return (f"{what}: {len(lat)} answers in {wall:.1f} s = {len(lat) / wall:.0f} inferences/s, "
            f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, {failures} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mmk")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--refine-clients", type=int, default=4)
    parser.add_argument("--refine-seconds", type=float, default=20.0)
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    import mechinfer
    from mechinfer import baseline
    from serving.app import build

    rows, _ = baseline.load_test_set(args.model, None, 256)
    m = mechinfer.get_model(args.model)
    bodies = [json.dumps({"observations": [{"t": float(t), "channel": m.channels[c], "value": float(v)}
                                           for t, c, v in zip(rows["t"][i], rows["channel"][i], rows["value"][i])]}).encode()
              for i in range(len(rows["t"]))]

    est = mechinfer.load_estimator(args.model)
    torch.set_num_threads(1)
    for b in (1, 256):
        est.estimate(rows["t"][:b], rows["channel"][:b], rows["value"][:b])
        start = time.perf_counter()
        reps = max(3, 512 // b)
        for _ in range(reps):
            est.estimate(rows["t"][:b], rows["channel"][:b], rows["value"][:b])
        print(f"in-process est.estimate, 1 thread, batch {b}: {(time.perf_counter() - start) / (reps * b) * 1e6:.0f} us/sample")

    ray.init(include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({}), name="mechinfer", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/models/{args.model}/infer"
    try:
        asyncio.run(_load(url, bodies[:8], 4, 3.0))  # warm up
        print(f"machine: {mechinfer.baseline.machine()}; Serve on 127.0.0.1, model {args.model}")
        print(_report(f"{args.clients} clients, no refine", *asyncio.run(_load(url, bodies, args.clients, args.seconds))))
        refine_bodies = [b.replace(b'"observations"', b'"refine": true, "observations"') for b in bodies]
        print(_report(f"{args.refine_clients} clients, refine", *asyncio.run(
            _load(url, refine_bodies, args.refine_clients, args.refine_seconds))))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
