"""Processes and ports for tests: find Ray processes by their command line (to kill one
in fault tests, or to check none is left), free TCP ports, a real `ray start --head`
cluster stopped by its pid, and a job submitted to it."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _pids_where(match) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if match((proc / "cmdline").read_bytes()):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def pids_of(title_prefix: bytes) -> list[int]:
    """Process ids whose command line (Ray sets it to the task or actor name, e.g.
    b"ray::MapBatches(...)") starts with ``title_prefix``."""
    return _pids_where(lambda cmdline: cmdline.startswith(title_prefix))


def pids_mentioning(text: str) -> list[int]:
    """Process ids whose command line contains ``text`` anywhere (e.g. a temp dir)."""
    return _pids_where(lambda cmdline: text.encode() in cmdline)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (bound at once, so that no two are the same)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def script(name: str) -> str | None:
    """A console script (``ray``, ``serve``, ``mechinfer``) of the environment running the
    tests, even when that environment's bin/ is not on PATH (``venv/bin/python -m pytest``)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@contextlib.contextmanager
def ray_head(flags: list[str], env: dict):
    """A real `ray start --head --block` with ``flags`` on free ports (every port: the
    suite's own local Ray holds the defaults, e.g. the dashboard agent's 52365, and a job
    needs that agent), in its own temp dir (so that ray.init() elsewhere in the session
    does not find it), stopped by its pid. Yields the dashboard's address."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    dashboard = free_port()
    proc = subprocess.Popen(
        [
            script("ray"),
            "start",
            "--head",
            "--block",
            *flags,
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={temp}",
            "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dashboard), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {proc.stdout.read().decode()[-2000:]}") from None
            time.sleep(1)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # ray start --block stops its cluster on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):  # ~7 s idle, over 10 s after jobs: not waited out
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):  # the whole group may have exited already
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the process group, at once
        proc.wait()
        leftovers = pids_mentioning(temp)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes of the test cluster outlived its process group: {leftovers}"
        shutil.rmtree(temp, ignore_errors=True)


def submit_job(address: str, token: str, entrypoint: str, timeout: float = 300) -> tuple[str, str]:
    """Submit ``entrypoint`` with this repository as its working dir to the cluster at
    ``address`` (a token-authenticated head) through Ray's JobSubmissionClient; wait for
    it to end. Returns (final status, logs)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address, headers={"authorization": "Bearer " + token})
    repo = Path(__file__).resolve().parents[1]
    deadline = time.time() + 120
    while True:  # the dashboard answers before the head's job agent is up
        try:
            job = client.submit_job(
                entrypoint=entrypoint,
                runtime_env={
                    "working_dir": str(repo),
                    "excludes": [".git", ".hypothesis", "runs", "data", "results", "*.egg-info"],
                },
            )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + timeout
    status = client.get_job_status(job)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(1)
        status = client.get_job_status(job)
    return status.value, client.get_job_logs(job)
