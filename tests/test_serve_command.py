"""`mechinfer serve` as users start it (issue 26): the fast path on the config's port,
ready only when every deployment answers at full speed, a prompt 503 for refinement
while the Refiner starts, a clean stop on Ctrl-C."""

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from processes import free_ports, script

import mechinfer
from mechinfer.serve import handlers as service

CONFIG = Path(__file__).resolve().parents[1] / "serving" / "config.yaml"
OBSERVATIONS = [
    {"t": 0.2, "channel": "S", "value": 7.9},
    {"t": 1.1, "channel": "P", "value": 3.2},
    {"t": 1.8, "channel": "S", "value": 5.6},
]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such Serve config file"),
        ("applications: [\n", "not valid YAML"),
        ("http_options: 3\n", "http_options"),
    ],
)
def test_bad_config_is_one_line(run_cli, tmp_path, text, message):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    status, _, err = run_cli("serve", str(path))
    assert status == 2 and err.startswith("serve: error: ") and message in err and err.count("\n") == 1, err


class _Refiner:
    """A stand-in for the Api's handle on the Refiner: ``ready.remote()`` answers once
    ``started`` is set, as Serve's router answers once a Refiner replica has started."""

    def __init__(self):
        self.started, self.calls, self.ready = asyncio.Event(), 0, self

    def remote(self):
        self.calls += 1
        return self.started.wait()


def test_readiness_is_told_at_once_and_settled_by_the_refiners_first_answer():
    """While no Refiner replica has answered, /healthz says 503 naming it, within
    READY_WAIT_S, asking the Refiner once however often it is asked (again only if that
    call was cancelled); its first answer makes the Api ready for good."""
    from serving import app

    async def run():
        refiner = _Refiner()
        api = SimpleNamespace(estimators={"mmk": None}, refiner=refiner, refiner_ready=False, _refiner_probe=None)
        api._refiner_ready = functools.partial(app.Api.func_or_class._refiner_ready, api)
        start = time.perf_counter()
        for _ in range(3):
            health = await app.Api.func_or_class.healthz(api)
            assert health.status_code == 503 and int(health.headers["Retry-After"]) >= 1
            assert json.loads(health.body) == {"status": "starting", "starting": ["Refiner"], "models": ["mmk"]}
        assert time.perf_counter() - start < 3 * app.READY_WAIT_S + 1.0 and refiner.calls == 1
        api._refiner_probe.cancel()  # as Serve cancels a call with the request that made it
        await asyncio.sleep(0)
        health = await app.Api.func_or_class.healthz(api)  # a 503, not the probe's CancelledError
        assert health.status_code == 503 and api._refiner_probe is None
        refiner.started.set()
        assert await app.Api.func_or_class.healthz(api) == {"status": "ok", "models": ["mmk"]}
        assert refiner.calls == 2  # asked again after the cancelled probe
        refiner.started.clear()  # settled: not asked again
        assert await api._refiner_ready() and refiner.calls == 2

    asyncio.run(run())


def _config(tmp_path: Path, port: int, warm_cache: str) -> Path:
    """serving/config.yaml on ``port``, mmk only, one replica each; the Api's replica
    loads its solver from the warm cache (``runtime_env``), so that only the Refiner's
    compiles: the window in which the Api answers and the Refiner is still starting is
    then certain, not a race between two compilations."""
    spec = yaml.safe_load(CONFIG.read_text())
    spec["http_options"]["port"] = port
    (app,) = spec["applications"]
    app["args"]["checkpoints"] = {"mmk": "mmk"}
    for d in app["deployments"]:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
        if d["name"] == "Api":
            d["ray_actor_options"]["runtime_env"] = {"env_vars": {"MECHINFER_CACHE": warm_cache}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _holding(variable: str) -> list[int]:
    """Processes whose environment holds ``variable`` (NAME=value): the command's Ray."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if variable.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
@pytest.mark.serve
def test_cold_start_is_ready_only_when_the_refiner_can_answer(tmp_path):
    warm = os.environ.get("MECHINFER_CACHE") or str(Path.home() / ".cache" / "mechinfer")
    service.warm_up(mechinfer.load_estimator("mmk"), refine=False)  # the Api's cache is warm (a no-op if it was)
    cold = tmp_path / "cold-cache"
    port, stats, metrics = free_ports(3)
    base = f"http://127.0.0.1:{port}"
    # HAProxy's stats and metrics on free ports too (Ray's defaults are fixed ones)
    env = {
        **os.environ,
        "MECHINFER_CACHE": str(cold),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
    }
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [script("mechinfer"), "serve", str(_config(tmp_path, port, warm))],
            cwd=CONFIG.parents[1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    body = {"observations": OBSERVATIONS, "refine": True}
    try:
        starting, deadline, left = [], time.time() + 300, False
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:  # nothing listens yet, or the Api replica holds requests until its __init__ returns
                if not left and requests.get(f"{base}/v1/models", timeout=30).status_code == 200:
                    # the Api answers: the first clients to ask /healthz leave before it can
                    # answer (it waits READY_WAIT_S for the Refiner), as in the next test
                    for _ in range(3):
                        try:
                            early = requests.get(f"{base}/healthz", timeout=0.1)
                        except requests.Timeout:
                            continue
                        assert early.status_code in (200, 503), early.text
                    left = True
                health = requests.get(f"{base}/healthz", timeout=30)
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.2)
                continue
            assert health.status_code in (200, 404, 503), health.text  # 404: no route yet, the app deploys
            if health.status_code == 200:
                break
            if health.status_code == 503 and "starting" in health.text:  # the Api answers, the Refiner starts
                assert health.json()["starting"] == ["Refiner"], health.text
                if not starting:
                    t = time.perf_counter()
                    r = requests.post(f"{base}/v1/models/mmk/infer", json=body, timeout=30)
                    asked = time.perf_counter() - t
                    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
                    assert "starting" in r.json()["error"] and asked < 2.0, (asked, r.text)
                    plain = requests.post(
                        f"{base}/v1/models/mmk/infer", json={"observations": OBSERVATIONS}, timeout=30
                    )
                    assert plain.status_code == 200 and plain.json()["refine_status"] == "not_requested", plain.text
                starting.append(health.json())
            time.sleep(0.2)
        else:
            pytest.fail(f"not ready after 300 s: {log.read_text()[-3000:]}")
        assert starting, "/healthz said ready without ever saying that the Refiner was starting"
        t = time.perf_counter()
        first = requests.post(f"{base}/v1/models/mmk/infer", json=body, timeout=30)
        assert first.status_code == 200 and first.json()["refine_status"] == "converged", first.text
        assert time.perf_counter() - t < 1.0
        compiled = os.listdir(cold / "native" / "__pycache__")  # numba's machine code, written by the Refiner
        assert any(name.startswith("mmk_") and name.endswith(".nbi") for name in compiled), compiled
        assert requests.get(f"{base}/", timeout=10).headers["content-type"].startswith("text/html")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = _holding(f"MECHINFER_CACHE={cold}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0 and not left, (proc.returncode, left, log.read_text()[-3000:])
    socket.create_server(("127.0.0.1", port)).close()  # nothing listens on the port any more (SO_REUSEADDR)


@pytest.mark.slow
@pytest.mark.serve
def test_serve_run_while_the_refiner_waits_for_a_node(tmp_path):
    """``serve run`` (Serve's proxy, as ``serve deploy`` on a cluster) with a Refiner that
    cannot be placed (it asks for more CPUs than there are, as on a cluster waiting for a
    node): plain requests are answered; /healthz and refine requests get a 503 naming the
    Refiner, also after clients left /healthz before its answer. Serve's proxy cancels a
    request whose client leaves, and the handle calls it made: the shared readiness probe
    was once one of them, and from then on every /healthz and refine request of that
    replica was a 500 (CI: the page test's refine requests)."""
    service.warm_up(mechinfer.load_estimator("mmk"), refine=False)  # the Api loads its solver warm
    warm = os.environ.get("MECHINFER_CACHE") or str(Path.home() / ".cache" / "mechinfer")
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    path = _config(tmp_path, port, warm)
    spec = yaml.safe_load(path.read_text())
    (refiner,) = [d for d in spec["applications"][0]["deployments"] if d["name"] == "Refiner"]
    refiner["ray_actor_options"]["num_cpus"] = 64
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "MECHINFER_TEST_SERVE_RUN": str(tmp_path)}  # finds its processes afterwards
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [script("serve"), "run", str(path)],
            cwd=CONFIG.parents[1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 180
        while True:  # until the Api answers (a 404 while the app deploys, no answer before)
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            try:
                if requests.get(f"{base}/v1/models", timeout=30).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        left = 0
        for _ in range(3):  # clients that leave before the Api can say 503
            try:
                early = requests.get(f"{base}/healthz", timeout=0.1)
            except requests.Timeout:
                left += 1
                continue
            assert early.status_code == 503, early.text
        assert left, "no client left /healthz before its answer"
        for _ in range(2):
            health = requests.get(f"{base}/healthz", timeout=30)
            assert health.status_code == 503 and health.json()["starting"] == ["Refiner"], health.text
            r = requests.post(
                f"{base}/v1/models/mmk/infer", json={"observations": OBSERVATIONS, "refine": True}, timeout=30
            )
            assert r.status_code == 503 and "starting" in r.json()["error"], r.text
            assert int(r.headers["Retry-After"]) >= 1
        plain = requests.post(f"{base}/v1/models/mmk/infer", json={"observations": OBSERVATIONS}, timeout=30)
        assert plain.status_code == 200 and plain.json()["refine_status"] == "not_requested", plain.text
    finally:  # killed: Serve's graceful stop waits about 25 s for the Refiner it cannot place
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pid in _holding(f"MECHINFER_TEST_SERVE_RUN={tmp_path}"):  # the local Ray that serve run started
            os.kill(pid, signal.SIGKILL)
