"""Load on the Serve application: N concurrent clients for M seconds against a local
Serve, throughput and p50/p99 latency, without and with refine, beside the in-process
cost of the same work (``est.estimate``, and the network + NLL that an answer holds)
measured in the same run.

    python bench/serve_load.py --model mmk --clients 32 --seconds 20
    python bench/serve_load.py --model mmk --throughput-optimized   # Ray Serve's direct ingress

Each client sends one observation set (a SPEC test sample; --sets-per-request K sends
K as one batch request) and waits for the answer before sending the next. Starts its
own Ray and Serve with the default configuration of serving/config.yaml, and stops them.
``--throughput-optimized`` starts Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray >= 2.55:
the ingress replica answers HTTP itself, on its own port, instead of behind the proxy
actor; replicas talk gRPC) and sends the load to the ingress replica's port.
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


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float):
    """Closed-loop clients: (latencies, failures, wall seconds, mean timing_ms of the answers)."""
    import aiohttp

    latencies: list[float] = []
    timings: list[dict] = []
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
                        answer = await r.read()
                        ok = r.status == 200
                    if ok:
                        answer = json.loads(answer)
                        timings.extend(a["timing_ms"] for a in answer.get("results", [answer]))
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1

    start = time.perf_counter()
    await asyncio.gather(*[client(k) for k in range(clients)])
    wall = time.perf_counter() - start
    mean = {key: float(np.mean([t[key] for t in timings if key in t])) for key in (timings[0] if timings else {})}
    return latencies, failures, wall, mean


def _report(what: str, latencies: list[float], failures: int, wall: float, timing: dict, sets: int) -> str:
    lat = np.array(latencies) * 1e3
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timing.items())
    return (
        f"{what}: {len(lat)} answers x {sets} set(s) in {wall:.1f} s = {len(lat) * sets / wall:.0f} inferences/s, "
        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, {failures} failed\n"
        f"    mean timing_ms of the answers: {stages}"
    )


def _in_process(model: str, rows) -> None:
    """What the same work costs without Serve and HTTP, one thread, same run."""
    import torch

    import mechinfer
    from mechinfer.serve import handlers as service

    est = mechinfer.load_estimator(model)
    torch.set_num_threads(1)
    service.warm_up(est, refine=False)
    for b in (1, 32, 256):
        t, ch, v = rows["t"][:b], rows["channel"][:b], rows["value"][:b]
        for what, fn in (
            ("est.estimate", lambda t=t, ch=ch, v=v: est.estimate(t, ch, v)),
            ("network + NLL (an answer)", lambda t=t, ch=ch, v=v: service.infer(est, t, ch, v)),
        ):
            fn()
            reps = max(3, 256 // b)
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            per = (time.perf_counter() - start) / (reps * b)
            print(f"in-process {what}, 1 thread, batch {b}: {per * 1e6:.0f} us/sample = {1 / per:.0f} /s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mmk")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sets-per-request", type=int, default=1)
    parser.add_argument("--refine-clients", type=int, default=4)
    parser.add_argument("--refine-seconds", type=float, default=20.0)
    parser.add_argument("--throughput-optimized", action="store_true")
    args = parser.parse_args()

    import os

    direct_port = _free_port() if args.throughput_optimized else None
    if direct_port:  # read by Ray Serve's processes, which the ray.init below starts
        os.environ.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(direct_port),
            RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(direct_port + 16),
        )

    import ray
    from ray import serve

    import mechinfer
    from mechinfer.evaluate import baseline
    from mechinfer.machine import machine
    from mechinfer.serve import handlers as service
    from serving.app import build

    rows, _ = baseline.load_test_set(args.model, None, 256)
    m = mechinfer.get_model(args.model)
    sets = [
        service.to_observations(m, rows["t"][i], rows["channel"][i], rows["value"][i]) for i in range(len(rows["t"]))
    ]
    k = args.sets_per_request

    def bodies(refine: bool) -> list[bytes]:
        if k == 1:
            return [json.dumps({"observations": s, "refine": refine}).encode() for s in sets]
        return [
            json.dumps({"batch": [sets[(i + j) % len(sets)] for j in range(k)], "refine": refine}).encode()
            for i in range(0, len(sets), k)
        ]

    print(f"machine: {machine()}; model {args.model}")
    _in_process(args.model, rows)

    ray.init(include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({}), name="mechinfer", route_prefix="/")
    url = f"http://127.0.0.1:{direct_port or port}/v1/models/{args.model}/infer"
    print(f"Serve on {url} ({'direct ingress, RAY_SERVE_THROUGHPUT_OPTIMIZED=1' if direct_port else 'proxy actor'})")
    try:
        asyncio.run(_load(url, bodies(False)[:8], 4, 3.0))  # first requests of every replica
        print(
            _report(
                f"{args.clients} clients, no refine",
                *asyncio.run(_load(url, bodies(False), args.clients, args.seconds)),
                k,
            )
        )
        if args.refine_seconds > 0:
            print(
                _report(
                    f"{args.refine_clients} clients, refine",
                    *asyncio.run(_load(url, bodies(True), args.refine_clients, args.refine_seconds)),
                    k,
                )
            )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
