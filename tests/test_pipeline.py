"""jobs/pipeline.py: killed in the middle of a stage and rerun, it skips the finished
stage, completes the interrupted one and runs every other stage to a live answer from
the served endpoint; bad input gets a clear message."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from processes import free_port

import mechinfer
from mechinfer.data import format as dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mmk", "--preset", "tiny"]  # every stage, 2000 samples


def _pipeline(*args, timeout=600):
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "pipeline.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_killed_mid_stage_then_rerun_resumes_then_every_stage_to_a_live_answer(tmp_path, run_cli):
    run = tmp_path / "run"
    args = [
        sys.executable,
        str(REPO / "jobs" / "pipeline.py"),
        *TINY,
        "--run",
        str(run),
        "--stages",
        "simulate,train-proxy",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while not (run / "stages" / "simulate.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert (run / "stages" / "simulate.json").exists(), proc.communicate()[0][-3000:]
    while not (run / "train-proxy" / "ray_results").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # inside Ray Train
    assert proc.poll() is None, "the pipeline was still in the train-proxy stage"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    proc.wait()
    assert not (run / "stages" / "train-proxy.json").exists()
    simulated = json.loads((run / "stages" / "simulate.json").read_text())

    # rerun with every stage, in the same run directory, to an answer from the endpoint
    port = free_port()
    whole = _pipeline(*TINY, "--run", str(run), "--port", str(port))
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-3000:]
    log = whole.stderr  # progress lines go to the log on standard error
    assert "[simulate] done already" in log  # finished before the kill: not redone
    for stage in ("train-proxy", "train-inference", "baseline", "evaluate", "serve"):
        assert f"[{stage}] done in" in log  # the interrupted stage, then the rest
    assert json.loads((run / "stages" / "simulate.json").read_text()) == simulated
    proxy = json.loads((run / "stages" / "train-proxy.json").read_text())["outputs"]["checkpoint"]
    assert (Path(proxy) / "checkpoint.json").exists() and (Path(proxy) / "weights.pt").exists()
    ids = dataset.read_table(str(run / "simulate"), columns=["sample_id"]).column("sample_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(2000))
    assert not list(run.rglob("*.tmp"))
    assert "[tune]" not in whole.stderr  # off in the preset
    served = json.loads((run / "stages" / "serve.json").read_text())["outputs"]
    assert served["endpoint"].startswith(f"http://127.0.0.1:{port}/runs/run-")
    assert f"served answer ({served['endpoint']})" in whole.stdout
    answer = served["answer"]
    assert sorted(answer["parameters"]) == sorted(mechinfer.get_model("mmk").parameter_names)
    assert np.isfinite(list(answer["parameters"].values())).all() and np.isfinite(answer["nll"])
    table = (run / "evaluate" / "table1.md").read_text()
    assert "BFGS, 2 starts" in table and "Deep Inference + BFGS" in table

    # the same run directory for another model, or made under another SPEC version (refused
    # before Ray starts: in this process)
    status, _, err = run_cli("pipeline", "--model", "ecoli", "--n", "3000", "--run", str(run), "--stages", "simulate")
    assert status == 2 and "is a run of 'mmk', not 'ecoli'" in err and "Traceback" not in err
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "spec_version": 0}))
    status, _, err = run_cli("pipeline", *TINY, "--run", str(run), "--stages", "simulate")
    assert status == 2 and "made for SPEC version 0" in err and "Traceback" not in err


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path, run_cli):
    """Refused before Ray starts: in this process (the job file runs as a subprocess in
    the test above)."""
    (tmp_path / "notes.txt").write_text("mine")
    status, _, err = run_cli("pipeline", "--model", "mmk", "--run", str(tmp_path))
    assert status == 2 and "is not empty and holds no run.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'; presets are ['paper', 'small', 'tiny']"),
        (["--stages", "simulate,deploy"], "unknown stage 'deploy'"),
        (["--stages", "baseline"], "stage 'train-inference' has not run in this run directory"),
        (["--model", "yeast"], "unknown model 'yeast'"),
        (["--n", "0"], "n must be a positive integer, got 0"),
        (["--address", "http://127.0.0.1:8265"], "is a job-submission (dashboard) address"),
    ],
)
def test_bad_input(tmp_path, run_cli, extra, message):
    args = ["--model", "mmk", "--run", str(tmp_path / "run"), *extra]
    if "--model" in extra:
        args = args[2:]
    status, _, err = run_cli("pipeline", *args)
    assert status == 2 and message in err, err[-3000:]
    assert "Traceback" not in err


def test_serve_stage_names_are_the_runs_own(tmp_path):
    """Each run deploys under its own application name and route prefix, never the
    production application's ("mechinfer" at "/")."""
    from mechinfer.workflows.pipeline import serve_name

    a, b = serve_name(str(tmp_path / "run one")), serve_name(str(tmp_path / "other" / "run one"))
    assert a != b and a[0] != "mechinfer" and a[1] != "/"
    assert a[0].startswith("mechinfer-run-run-one-") and a[1].startswith("/runs/run-one-")
    assert serve_name(str(tmp_path / "run one") + "/") == a
