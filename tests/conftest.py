import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from mechinfer.runtime import TRAIN_POLL_S

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Eager solver steps unless a test asks for compiled ones: compiling the fit's forward and
# backward graphs costs 40 s (mmk) to 95 s (ecoli) in every process that does it (each
# Ray worker, each job subprocess), far more than the small batches of a test run. The
# compiled paths have tests of their own that pass compile=True (test_solver, test_fitting).
# Set here, before any Ray starts, so that Ray workers and job subprocesses inherit it.
os.environ.setdefault("MECHINFER_COMPILE", "0")
# The Ray Train controllers of the session's Ray (started by ray_local with ray.init, not
# by runtime.ensure_ray) poll their workers as an embedded Ray's do.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)

# The S3 endpoint of the s3:// tests: a moto server that the `s3` fixture starts on first
# use, serving this port, reserved (bound and listening) from here on so that nothing else
# takes it. Its address and fake credentials are in the environment before any Ray
# starts, so Ray workers and job subprocesses reach it as the test process does (pyarrow's
# S3 filesystem reads AWS_ENDPOINT_URL), and no test can reach a real AWS account.
_S3_SOCKET = socket.create_server(("127.0.0.1", 0))
S3_ENDPOINT = f"http://127.0.0.1:{_S3_SOCKET.getsockname()[1]}"
for _name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
os.environ.update(
    AWS_ENDPOINT_URL=S3_ENDPOINT,
    AWS_ACCESS_KEY_ID="mechinfer-test",
    AWS_SECRET_ACCESS_KEY="mechinfer-test",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
_MOTO = """import sys
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server
app = DomainDispatcherApplication(create_backend_app)
make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler, fd=int(sys.argv[1])).serve_forever()
"""


class S3Bucket:
    """A bucket on the test S3 endpoint. ``uri("a", "b")`` is ``s3://<bucket>/a/b``;
    ``fs`` is pyarrow's S3 filesystem; ``files(uri)`` the files under a URI (relative
    names -> sizes)."""

    def __init__(self, name: str):
        import pyarrow.fs as pafs

        self.name = name
        self.fs = pafs.S3FileSystem(endpoint_override=S3_ENDPOINT, allow_bucket_creation=True)
        self.fs.create_dir(name)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *parts])

    def files(self, uri: str) -> dict[str, int]:
        import pyarrow.fs as pafs

        root = uri.removeprefix("s3://").rstrip("/")
        infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return {i.path[len(root) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An empty bucket on a real S3 endpoint: a moto server in a subprocess of its own
    (log in the session's temporary directory), stopped by its pid when the session ends.
    For every test of s3:// locations (tests/test_s3.py; bulk estimation outputs too)."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    fd = _S3_SOCKET.fileno()
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO, str(fd)], pass_fds=[fd], stdout=f, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(S3_ENDPOINT, timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the moto S3 server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield S3Bucket("mechinfer-test")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the tests that need one."""
    import ray

    if ray.is_initialized():  # a failed in-process CLI test's embedded Ray: not the one we want
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """run_cli(*args) -> (exit status, stdout, stderr) of ``mechinfer ARGS`` run in this
    process: the code a job file runs, without the ~6 s a new Python spends importing
    torch and Ray (each job file is also run as a subprocess by some test). Only for runs
    that end before Ray starts (bad input): the session's Ray belongs to ``ray_local``."""
    from mechinfer import cli

    def run(*args: str):
        monkeypatch.setenv("RAY_ADDRESS", "")  # --address sets it: restored after the test
        monkeypatch.delenv("RAY_ADDRESS")
        try:
            status = cli.main(list(args))
        except SystemExit as exc:  # argparse's own errors and --help
            status = exc.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def pytest_collection_modifyitems(config, items):
    """Tests that start Ray are slow (the fast tier, ``-m "not slow"``, leaves them out);
    ``gpu`` tests are skipped where torch sees no CUDA device."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
