import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Eager solver steps unless a test asks for compiled ones: compiling the fit's forward and
# backward graphs costs 40 s (mmk) to 95 s (ecoli) in every process that does it (each
# Ray worker, each job subprocess), far more than the small batches of a test run. The
# compiled paths have tests of their own that pass compile=True (test_solver, test_fitting).
# Set here, before any Ray starts, so that Ray workers and job subprocesses inherit it.
os.environ.setdefault("MECHINFER_COMPILE", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the tests that need one."""
    import ray

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
