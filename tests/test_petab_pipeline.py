"""The whole pipeline on a PEtab problem (SPEC 12), Boehm at the tiny preset, killed in
the middle of a stage and rerun: every stage with no per-problem settings, resumed where
it stopped, the real-data table (each method's exact log-likelihood on the problem's own
measurements) and a live served answer for those measurements that equals ``est.infer``
on the same measurements. Boehm is vendored in tests/data/petab (BSD license). The
pipeline's bad input: tests/test_pipeline.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from processes import free_port

import mechinfer
from mechinfer.data.format import read_table
from mechinfer.learn import checkpoint, losses, networks
from mechinfer.learn.trainer import VALIDATION_EVERY
from mechinfer.models.sources import petab_problem

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BOEHM = REPO / "tests" / "data" / "petab" / "Boehm_JProteomeRes2014" / "Boehm_JProteomeRes2014.yaml"
PUBLISHED = -138.22199693517703  # AMICI's benchmark tests, at the nominal parameters


def test_killed_mid_stage_then_resumed_to_the_real_data_table_and_a_served_answer(tmp_path, run_cli):
    """jobs/pipeline.py on Boehm at the tiny preset (half its samples): killed in the
    middle of train-proxy and rerun, it skips the finished stage, completes the
    interrupted one and runs every other stage to the real-data table and a live served
    answer; then a run directory of another model or SPEC version is refused."""
    run = tmp_path / "run"
    tiny = ["--model", str(BOEHM), "--preset", "tiny", "--n", "1000", "--run", str(run)]
    job = [sys.executable, str(REPO / "jobs" / "pipeline.py")]
    proc = subprocess.Popen(
        [*job, *tiny, "--stages", "simulate,train-proxy"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
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
    r = subprocess.run([*job, *tiny, "--port", str(port)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "[simulate] done already" in r.stderr  # finished before the kill: not redone
    for stage in ("train-proxy", "train-inference", "baseline", "evaluate", "serve"):
        assert f"[{stage}] done in" in r.stderr  # the interrupted stage, then the rest
    assert "[tune]" not in r.stderr  # off in the preset
    assert json.loads((run / "stages" / "simulate.json").read_text()) == simulated
    proxy_ck = json.loads((run / "stages" / "train-proxy.json").read_text())["outputs"]["checkpoint"]
    assert (Path(proxy_ck) / "checkpoint.json").exists() and (Path(proxy_ck) / "weights.pt").exists()
    ids = read_table(str(run / "simulate"), columns=["sample_id"]).column("sample_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(1000))
    assert not list(run.rglob("*.tmp"))
    served = json.loads((run / "stages" / "serve.json").read_text())["outputs"]
    assert served["endpoint"].startswith(f"http://127.0.0.1:{port}/runs/run-")
    assert f"served answer ({served['endpoint']})" in r.stdout
    table1 = (run / "evaluate" / "table1.md").read_text()
    assert "BFGS, 2 starts" in table1 and "Deep Inference + BFGS" in table1
    # a user's problem gets the refine stage with 8 starts too, judged as the 1-start one
    t1 = pd.read_csv(run / "evaluate" / "table1.csv").set_index("method")
    assert np.isfinite(t1.loc[["Deep Inference + refine", "Deep Inference + refine (8 starts)"], "R2"]).all()
    assert "Deep Inference + refine (8 starts) vs the best multistart row by R2" in table1

    # the real-data table: every method's exact log-likelihood finite, none above the best
    # found, the reference the published one, the multistart's success rate a share
    table = pd.read_csv(run / "evaluate" / "real_data.csv")
    assert set(table["model"]) == {"Boehm_JProteomeRes2014"}
    methods = list(table["method"])
    assert any(m.startswith("BFGS multistart, 8 starts") for m in methods)
    assert {"Deep Inference", "Deep Inference + refine", "Deep Inference + BFGS"} <= set(methods)
    ll = table["best log-likelihood"].to_numpy()
    # a refinement with more starts begins with the 1-start one's: it never ends lower
    by = dict(zip(methods, ll))
    for k in (2, 4, 8):
        assert by[f"Deep Inference + refine ({k} starts)"] >= by["Deep Inference + refine"] - 1e-4, by
    assert np.isfinite(ll).all()
    best = ll.max()
    assert (ll <= best + 1e-9).all()
    np.testing.assert_allclose(table["reference log-likelihood"], PUBLISHED, atol=0.01)
    report = (run / "evaluate" / "table1.md").read_text()
    assert "Real data: Boehm_JProteomeRes2014 (48 measurements)" in report
    assert "success rate" in report and (run / "evaluate" / "real_data_Boehm_JProteomeRes2014.png").exists()

    # training learned: the network's NLL through the proxy on the validation rows is well
    # below that of its initial weights, or, where the training through the proxy did not
    # raise R2 over the warm-up's and the warm-up's network went on, its z error is below the
    # initial weights'
    data, proxy = run / "simulate", run / "train-proxy" / "checkpoint"
    table = read_table(str(data))
    validation = table.filter(pa.array(np.asarray(table["sample_id"]) % VALIDATION_EVERY == 0))
    m = mechinfer.load_model(str(BOEHM))
    rows = losses.batch_tensors(validation, m)
    net, meta = checkpoint.load(
        str(run / "train-inference" / "checkpoint" / "through-proxy"), model=m, kind="inference"
    )
    proxy_net, _ = checkpoint.load(str(proxy), kind="proxy")
    torch.manual_seed(0)  # the trainer's seed (0) and rank: its first weights
    fresh = networks.build(meta["network"])
    with torch.no_grad():
        before = losses.inference_loss(m, fresh, rows, through="proxy", proxy=proxy_net)
        after = losses.inference_loss(m, net, rows, through="proxy", proxy=proxy_net)
        fresh_mse = (fresh(rows["t"], rows["channel"], rows["value"]) - rows["z"]).square().mean()
        net_mse = (net(rows["t"], rows["channel"], rows["value"]) - rows["z"]).square().mean()
    chosen = meta["metrics"]
    warm, _ = checkpoint.load(str(run / "train-inference" / "checkpoint" / "warm-up"), model=m, kind="inference")
    is_warm = all(torch.equal(v, warm.state_dict()[k]) for k, v in net.state_dict().items())
    if chosen["kept"] == "inference":
        assert chosen["validation_r2"] >= chosen["validation_r2_warmup"] and not is_warm
        assert after < 0.5 * before
    else:
        assert chosen["kept"] == "warmup" and chosen["validation_r2_warmup"] > chosen["validation_r2"] and is_warm
        assert net_mse < fresh_mse

    # the served answer for the problem's measurements equals est.infer on them
    served = json.loads((run / "stages" / "serve.json").read_text())["outputs"]
    assert served["answered"] == "the problem's measurements"
    answer = served["answer"]
    ckpt = json.loads((run / "stages" / "train-inference.json").read_text())["outputs"]["checkpoint"]
    est = mechinfer.load_estimator(ckpt)
    problem = petab_problem(est.model)
    obs = mechinfer.observations_from_frame(problem.measurements, model=est.model)
    res = est.infer(obs.t, obs.channel, obs.value, refine=True)
    assert answer["refine_status"] == res.refine_status[0]
    served_theta = np.array([answer["parameters"][n] for n in est.model.parameter_names])
    # the same fit: the same NLL, and the same point where the data determine it; along a
    # direction they do not (the likelihood flat), the served fit (batched in the Refiner,
    # under its deadline) and this one may stop apart within the trust region's tolerance
    assert np.isfinite(answer["nll"]) and answer["nll"] == pytest.approx(res.nll[0], rel=1e-8)
    determined = np.array([answer["determined"][n] for n in est.model.parameter_names])
    np.testing.assert_allclose(served_theta[determined], res.theta[0][determined], rtol=1e-6)
    np.testing.assert_allclose(served_theta, res.theta[0], rtol=1e-4)
    # the estimate's exact log-likelihood is at most the best any method found
    assert problem.log_likelihood(res.theta[0]) <= best + 1e-6

    # the same run directory for another model, or made under another SPEC version (refused
    # before Ray starts: in this process)
    status, _, err = run_cli("pipeline", "--model", "mmk", "--run", str(run), "--stages", "simulate")
    assert status == 2 and "is a run of 'Boehm_JProteomeRes2014', not 'mmk'" in err and "Traceback" not in err
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "spec_version": 0}))
    status, _, err = run_cli("pipeline", *tiny, "--stages", "simulate")
    assert status == 2 and "made for SPEC version 0" in err and "Traceback" not in err
