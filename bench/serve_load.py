"""Load on the Serve application as users run it: ``serve run serving/config.yaml``
(the config file's application, limits and deployments; only the HTTP port is a free one),
N concurrent clients for M seconds, throughput and p50/p99 latency, without and with
refine, beside the in-process cost of the same work (``est.estimate``, and the network +
NLL that an answer holds) measured in the same run.

    python bench/serve_load.py --model mmk --clients 32 --seconds 20
    python bench/serve_load.py --model mmk --throughput-optimized   # Ray Serve's direct ingress
    python bench/serve_load.py --refine-flood                       # issue 12's refine flood

Each client sends one observation set (a SPEC test sample; --sets-per-request K sends
K as one batch request) and waits for the answer before sending the next. Starts
``serve run`` as a process of its own (it starts an embedded Ray) and stops it by its
process group. ``--throughput-optimized`` runs it with RAY_SERVE_THROUGHPUT_OPTIMIZED=1
(Ray >= 2.55: the ingress replica answers HTTP itself, on its own port, instead of behind
the proxy actor; replicas talk gRPC) and sends the load to the ingress replica's port.
``--refine-flood``: 4 clients each sending 16 refine cases of 64 E. coli observations
while one client sends plain mmk requests: status codes, refine statuses, the slowest
answers against the config's refine deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "serving" / "config.yaml"


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
            ("network + NLL + intervals (an answer)", lambda t=t, ch=ch, v=v: service.infer(est, t, ch, v)),
        ):
            fn()
            reps = max(3, 256 // b)
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            per = (time.perf_counter() - start) / (reps * b)
            print(f"in-process {what}, 1 thread, batch {b}: {per * 1e6:.0f} us/sample = {1 / per:.0f} /s")


def _start_serve(config: Path, port: int, direct_port: int | None, log: Path):
    """``serve run`` of a copy of ``config`` with HTTP on ``port``; returns the process."""
    spec = yaml.safe_load(config.read_text())
    spec.setdefault("http_options", {})["port"] = port
    copy = Path(tempfile.mkdtemp()) / "config.yaml"
    copy.write_text(yaml.safe_dump(spec))
    env = dict(os.environ)
    if direct_port:
        env.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(direct_port),
            RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(direct_port + 16),
        )
    serve_cli = os.path.join(os.path.dirname(sys.executable), "serve")
    with open(log, "w") as out:
        return subprocess.Popen(
            [serve_cli, "run", str(copy)],
            cwd=config.parents[1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(base: str, proc, timeout: float = 300.0) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve run exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"no answer from {base}/healthz after {timeout:.0f} s")


def _stop(proc) -> None:
    """SIGINT to serve run's process group (it shuts Serve and its Ray down), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _refine_flood(base: str, seconds: float, deadline_s: float) -> None:
    """4 clients x 16 refine cases of 64 E. coli observations, and plain mmk requests."""
    import requests

    import mechinfer
    from mechinfer.data.samples import spec_test_set
    from mechinfer.serve import handlers as service

    m = mechinfer.get_model("ecoli")
    theta = spec_test_set(m)["theta"][:64]
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, m.T, (64, 64)), axis=1)
    ch = rng.integers(0, len(m.channels), (64, 64))
    clean = m.simulate(theta, t)
    value = np.take_along_axis(clean, ch[..., None], 2)[..., 0] + m.sigma[ch] * rng.standard_normal((64, 64))
    sets = [service.to_observations(m, t[i], ch[i], value[i]) for i in range(64)]
    mmk = mechinfer.get_model("mmk")
    rows = spec_test_set(mmk)
    plain_body = {"observations": service.to_observations(mmk, rows["t"][0], rows["channel"][0], rows["value"][0])}
    refine_log: list[tuple[int, float, list]] = []
    plain_log: list[tuple[int, float]] = []
    stop = time.perf_counter() + seconds

    def refine_client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            body = {"batch": [sets[(i * 16 + j) % 64] for j in range(16)], "refine": True}
            i += 4
            start = time.perf_counter()
            r = requests.post(f"{base}/v1/models/ecoli/infer", json=body, timeout=deadline_s + 60)
            statuses = [a.get("refine_status", "error") for a in r.json().get("results", [])] if r.ok else []
            refine_log.append((r.status_code, time.perf_counter() - start, statuses))
            if r.status_code == 503:
                time.sleep(float(r.headers.get("Retry-After", 1)))

    def plain_client() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            code = requests.post(f"{base}/v1/models/mmk/infer", json=plain_body, timeout=60).status_code
            plain_log.append((code, time.perf_counter() - start))

    import threading

    threads = [threading.Thread(target=refine_client, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=plain_client))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    codes = collections.Counter(c for c, _, _ in refine_log)
    statuses = collections.Counter(s for _, _, ss in refine_log for s in ss)
    slowest = max(d for _, d, _ in refine_log)
    print(
        f"refine flood, {seconds:.0f} s, 4 clients x 16 E. coli cases of 64 observations: {len(refine_log)} "
        f"requests, codes {dict(codes)}, refine_status {dict(statuses)}, slowest answer {slowest:.2f} s "
        f"(deadline {deadline_s:g} s)"
    )
    plain_codes = collections.Counter(c for c, _ in plain_log)
    lat = np.array([d for _, d in plain_log]) * 1e3
    print(
        f"plain mmk meanwhile: {len(plain_log)} requests, codes {dict(plain_codes)}, p50 {np.percentile(lat, 50):.1f} "
        f"ms, p99 {np.percentile(lat, 99):.1f} ms, slowest {lat.max():.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mmk")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sets-per-request", type=int, default=1)
    parser.add_argument("--refine-clients", type=int, default=4)
    parser.add_argument("--refine-seconds", type=float, default=20.0)
    parser.add_argument("--throughput-optimized", action="store_true")
    parser.add_argument("--refine-flood", action="store_true", help="run issue 12's refine flood instead")
    args = parser.parse_args()

    import mechinfer
    from mechinfer.evaluate import baseline
    from mechinfer.machine import machine
    from mechinfer.serve import handlers as service

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

    print(f"machine: {machine()}; model {args.model}; config {args.config}")
    if not args.refine_flood:
        _in_process(args.model, rows)

    port = _free_port()
    direct_port = _free_port() if args.throughput_optimized else None
    log = Path(tempfile.mkdtemp()) / "serve.log"
    proc = _start_serve(args.config, port, direct_port, log)
    base = f"http://127.0.0.1:{direct_port or port}"
    url = f"{base}/v1/models/{args.model}/infer"
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        if direct_port:
            _wait_ready(base, proc)
        print(f"serve run {args.config.name} on {url} ({'direct ingress' if direct_port else 'proxy actor'})")
        if args.refine_flood:
            deadline = yaml.safe_load(args.config.read_text())["applications"][0]["args"].get("refine_timeout_s", 10)
            _refine_flood(base, args.refine_seconds, float(deadline))
            return
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
        _stop(proc)
        print(f"(serve run's log: {log})")


if __name__ == "__main__":
    main()
