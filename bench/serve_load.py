"""Load on the Serve application as users run it, started each way in the same run:
``mechinfer serve serving/config.yaml`` (the documented command: direct ingress behind
HAProxy) and ``serve run serving/config.yaml`` (the proxy actor; what the README said
before issue 26). The config file's application, limits and deployments; only the HTTP
port is a free one. N concurrent clients for M seconds, throughput and p50/p99 latency,
without and with refine, beside the in-process cost of the same work (``est.estimate``,
and the network + NLL that an answer holds) measured in the same run.

    python bench/serve_load.py --model mmk --clients 32 --seconds 20
    python bench/serve_load.py --paths "mechinfer serve"              # one way only
    python bench/serve_load.py --refine-flood                         # issue 12's refine flood

Each client sends one observation set (a SPEC test sample; --sets-per-request K sends
K as one batch request) and waits for the answer before sending the next. Each way
starts as a process of its own (it starts an embedded Ray), is loaded once /healthz says
ready, and is stopped by SIGINT to its process group (Ctrl-C). ``--refine-flood``: 4
clients each sending 16 refine cases of 64 E. coli observations while one client sends
plain mmk requests: status codes, refine statuses, the slowest answers against the
config's refine deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from processes import free_ports  # the tests' helper: distinct free ports, bound at once

CONFIG = Path(__file__).resolve().parents[1] / "serving" / "config.yaml"


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 request on a kept-alive connection: (status, body, whether the
    connection stays open)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:-2])
    )
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        chunks = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return int(head[9:12]), body, headers.get(b"connection", b"").lower() != b"close"


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float):
    """Closed-loop clients, each on one kept-alive HTTP/1.1 connection, written on
    asyncio streams: a load generator that shares the server's 2 CPUs must cost little
    (aiohttp took about as much CPU as the Api replica it loaded). Returns (latencies,
    failures, wall seconds, mean timing_ms of the answers)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests_ = [
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []
    timings: list[dict] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal failures
        i, connection = k, None
        while time.perf_counter() < stop:
            request = requests_[i % len(requests_)]
            i += clients
            start = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                status, answer, open_ = await _exchange(*connection, request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                status, answer, open_ = 0, b"", False
            if not open_:
                if connection is not None:
                    connection[1].close()
                connection = None
            if status == 200:
                latencies.append(time.perf_counter() - start)
                parsed = json.loads(answer)
                timings.extend(a["timing_ms"] for a in parsed.get("results", [parsed]))
            else:
                failures += 1
        if connection is not None:
            connection[1].close()

    start = time.perf_counter()
    await asyncio.gather(*[client(k) for k in range(clients)])
    wall = time.perf_counter() - start
    mean = {key: float(np.mean([t[key] for t in timings if key in t])) for key in (timings[0] if timings else {})}
    return latencies, failures, wall, mean


# the server's processes whose CPU time a load is charged with: by the first word of the
# command line (Ray titles its actors "ray::<class>..."); this process is the client
SERVER_PROCESSES = {
    "Api": "ray::ServeReplica:mechinfer:Api",
    "Refiner": "ray::ServeReplica:mechinfer:Refiner",
    "proxy actor": "ray::ProxyActor",
    "HAProxy": "haproxy",
}
MARK = "MECHINFER_SERVE_LOAD"  # in the environment of the server this run started, and so of its Ray processes


def _cpu_seconds(mark: str) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the processes of the server marked
    ``mark`` (summed per kind of SERVER_PROCESSES) and by this process, the client."""
    tick = os.sysconf("SC_CLK_TCK")
    out = collections.Counter({"client": time.process_time()})
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"{MARK}={mark}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            first = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for kind, name in SERVER_PROCESSES.items():
            if first.startswith(name) or os.path.basename(first) == name:
                out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _charged(before: dict[str, float], after: dict[str, float], answers: int, wall: float) -> str:
    """CPU milliseconds per answer of each process kind between two _cpu_seconds() (with
    "busy", the machine's busy seconds), and the share of the machine's CPUs that the rest
    took meanwhile (Ray's other processes, and whatever else runs on the machine: a
    load that shares it with other work is slower, and says so)."""
    used = {k: after[k] - before.get(k, 0.0) for k in after if k != "busy"}
    per = ", ".join(f"{k} {1e3 * v / max(answers, 1):.2f}" for k, v in used.items() if v > 0)
    rest = (after["busy"] - before["busy"] - sum(used.values())) / (wall * (os.cpu_count() or 1))
    return f"{per}; the rest of the machine: {100 * rest:.0f}% of its CPUs"


def _report(what: str, latencies: list[float], failures: int, wall: float, timing: dict, sets: int, cpu: str) -> str:
    lat = np.array(latencies) * 1e3
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timing.items())
    return (
        f"{what}: {len(lat)} answers x {sets} set(s) in {wall:.1f} s = {len(lat) * sets / wall:.0f} inferences/s, "
        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, {failures} failed\n"
        f"    mean timing_ms of the answers: {stages}\n"
        f"    CPU ms per answer: {cpu}"
    )


def _measured(mark: str, what: str, url: str, bodies: list[bytes], clients: int, seconds: float, sets: int) -> str:
    """_report of one load, with the CPU time each process spent per answer."""
    before = {**_cpu_seconds(mark), "busy": _busy_seconds()}
    latencies, failures, wall, timing = asyncio.run(_load(url, bodies, clients, seconds))
    cpu = _charged(before, {**_cpu_seconds(mark), "busy": _busy_seconds()}, len(latencies), wall)
    return _report(what, latencies, failures, wall, timing, sets, cpu)


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


# how each way is started: a console script of this environment and its arguments
PATHS = {"mechinfer serve": ("mechinfer", "serve"), "serve run": ("serve", "run")}


def _start_serve(path: str, config: Path, ports: list[int], log: Path, mark: str):
    """``path`` (a key of PATHS) on a copy of ``config`` with HTTP on ``ports[0]`` (and
    HAProxy's stats and metrics on the other two), its environment marked ``mark``;
    returns the process."""
    port, stats, metrics = ports
    spec = yaml.safe_load(config.read_text())
    spec.setdefault("http_options", {})["port"] = port
    copy = Path(tempfile.mkdtemp()) / "config.yaml"
    copy.write_text(yaml.safe_dump(spec))
    script, verb = PATHS[path]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({MARK: mark}, RAY_SERVE_HAPROXY_STATS_PORT=str(stats), RAY_SERVE_HAPROXY_METRICS_PORT=str(metrics))
    with open(log, "w") as out:
        return subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), script), verb, str(copy)],
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
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/healthz", timeout=30).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"no answer from {base}/healthz after {timeout:.0f} s")


def _stop(proc) -> None:
    """SIGINT to the server's process group (it shuts Serve and its Ray down), then SIGKILL."""
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
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated ways to start the server, each measured in turn: {', '.join(PATHS)}",
    )
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

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"--paths: unknown {sorted(unknown)}; choose from {list(PATHS)}")
    for path in paths:
        _measure(path, args, bodies, k)


def _measure(path: str, args, bodies, k: int) -> None:
    """Start the server ``path`` way, load it, stop it."""
    ports = free_ports(3)
    port, mark = ports[0], f"{os.getpid()}-{ports[0]}"
    log = Path(tempfile.mkdtemp()) / "serve.log"
    start = time.perf_counter()
    proc = _start_serve(path, args.config, ports, log, mark)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{args.model}/infer"
    try:
        _wait_ready(base, proc)
        print(f"\n{path} {args.config.name}: ready in {time.perf_counter() - start:.0f} s, load on {url}")
        if args.refine_flood:
            deadline = yaml.safe_load(args.config.read_text())["applications"][0]["args"].get("refine_timeout_s", 10)
            _refine_flood(base, args.refine_seconds, float(deadline))
            return
        asyncio.run(_load(url, bodies(False)[:8], 4, 3.0))  # first requests of every replica
        print(_measured(mark, f"{args.clients} clients, no refine", url, bodies(False), args.clients, args.seconds, k))
        if args.refine_seconds > 0:
            what = f"{args.refine_clients} clients, refine"
            print(_measured(mark, what, url, bodies(True), args.refine_clients, args.refine_seconds, k))
    finally:
        stopping = time.perf_counter()
        _stop(proc)
        print(f"({path} stopped in {time.perf_counter() - stopping:.1f} s, exit {proc.returncode}; log: {log})")


if __name__ == "__main__":
    main()
