"""The baseline job (Ray tasks, Parquet, retries) and the evaluate job (Table 1)."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from processes import pids_of

from mechinfer.data.generate import simulate_dataset
from mechinfer.evaluate import baseline

REPO = Path(__file__).resolve().parents[1]


def _fits(out):
    t = pa.concat_tables([pq.read_table(p) for p in sorted(Path(out).glob("part-*.parquet"))])
    order = [("optimizer", "ascending"), ("sample_id", "ascending"), ("method", "descending"), ("start", "ascending")]
    return t.sort_by(order)


def test_baseline_and_report(ray_local, tmp_path):
    out = tmp_path / "baseline"
    # a short iteration budget keeps the test quick (the report's numbers need not be
    # converged fits, only real ones); the shipped settings are exercised by the pipeline
    summary = baseline.run_baseline("mmk", str(out), limit=8, chunk_size=4, starts=[1, 2, 4, 8], max_iter=60)
    assert summary.samples == 8 and summary.chunks == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "baseline" and manifest["model"] == "mmk" and manifest["starts"] == [1, 2, 4, 8]
    assert manifest["test_set"] == {"source": "SPEC test set", "seed": 20231205, "n_samples": 8}
    assert not (out / "_baseline.json").exists()
    assert manifest["optimizers"] == ["bfgs", "trust-region"]
    fits = _fits(out).to_pydict()
    method, optimizer = np.array(fits["method"]), np.array(fits["optimizer"])
    ids = np.array(fits["sample_id"])
    assert all(s > 0 for s in fits["seconds"]) and all(e >= i for e, i in zip(fits["evaluations"], fits["iterations"]))
    problems = np.array(fits["problems"])
    evals, iters = np.array(fits["evaluations"]), np.array(fits["iterations"])
    multi = pq.read_table(out / "multistart.parquet").to_pydict()
    assert len(multi["sample_id"]) == 2 * 8 * 5  # per optimizer: 4 numbers of starts and the network start
    nll = {
        (o, m, k, s): f
        for o, m, k, s, f in zip(multi["optimizer"], multi["method"], multi["starts"], multi["sample_id"], multi["nll"])
    }
    for opt in ("bfgs", "trust-region"):
        prior, network = (optimizer == opt) & (method == "prior"), (optimizer == opt) & (method == "network")
        assert sorted(ids[prior].tolist()) == sorted(list(range(8)) * 8)
        assert sorted(ids[network].tolist()) == list(range(8))
        # each method timed as it runs: a chunk's network starts are a fit of their own (4
        # problems), not passengers in the prior starts' rounds (32 problems)
        assert (problems[network] == 4).all() and (problems[prior] == 32).all()
        for s in range(8):
            starts = np.array(fits["nll"])[prior & (ids == s)]
            assert nll[(opt, "prior", 8, s)] == starts.min() and nll[(opt, "prior", 1, s)] == starts[0]
            assert (
                nll[(opt, "prior", 8, s)]
                <= nll[(opt, "prior", 4, s)]
                <= nll[(opt, "prior", 2, s)]
                <= nll[(opt, "prior", 1, s)]
            )
    # the Gauss-Newton start's Jacobian is counted: one evaluation more than the BFGS rounds
    bfgs_network = (optimizer == "bfgs") & (method == "network")
    assert (evals[bfgs_network] >= iters[bfgs_network] + 2).all()
    # the trust region takes fewer evaluations from the network's estimates than BFGS
    assert evals[(optimizer == "trust-region") & (method == "network")].sum() < evals[bfgs_network].sum()

    report = tmp_path / "report"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "evaluate.py"),
            "--baseline",
            str(out),
            "--out",
            str(report),
            "--bootstrap",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "MECHINFER_COMPILE": "0"},
    )  # small batches: eager is quicker
    assert run.returncode == 0, run.stderr
    assert f"report: {report}/table1.md" in run.stdout
    rows = list(csv.DictReader((report / "table1.csv").open()))
    assert [r["method"] for r in rows] == [
        "BFGS, 1 start",
        "BFGS, 2 starts",
        "BFGS, 4 starts",
        "BFGS, 8 starts",
        "trust-region, 1 start",
        "trust-region, 2 starts",
        "trust-region, 4 starts",
        "trust-region, 8 starts",
        "Deep Inference",
        "Deep Inference + MM",
        "Deep Inference + BFGS",
        "Deep Inference + trust-region",
        "Deep Inference + refine",
    ]
    for r in rows:
        assert 0.5 < float(r["R2"]) <= 1 and 0 < float(r["R2 stderr"]) < 0.5 and float(r["time per sample CPU (s)"]) > 0
        assert float(r["one experiment alone CPU (s)"]) > 0, r  # the online figure, batch 1
    md = (report / "table1.md").read_text()
    assert "Cost of one start" in md and "| BFGS | network estimate | 8 |" in md and "| BFGS | prior draw | 64 |" in md
    assert "| trust-region | network estimate | 8 |" in md and "| trust-region | prior draw | 64 |" in md
    assert "Deep Inference + trust-region vs the faster 8-start row" in md
    assert "Deep Inference + refine vs the best multistart row by R2" in md
    assert "python jobs/evaluate.py --baseline" in md and "CPUs; GPU:" in md
    for name in ("trajectories_mmk.png", "landscape_mmk.png", "bfgs_starts.csv", "report.json"):
        assert (report / name).stat().st_size > 0
    model = json.loads((report / "report.json").read_text())["models"][0]
    assert model["model"] == "mmk"
    # the calibration of the intervals: per parameter and level, a coverage made from the
    # 8 samples (a share of 8), growing with the level; the auto-refine comparison
    cal = model["calibration"]
    assert cal["levels"] == [0.5, 0.68, 0.9, 0.95, 0.99] and cal["parameters"] == ["Vmax", "Km", "S_0", "P_0"]
    for kind in ("network", "refined"):
        cov = np.array(cal["coverage"][kind])
        assert cov.shape == (5, 4) and np.allclose(cov * 8, np.round(cov * 8)) and (np.diff(cov, axis=0) >= 0).all()
        assert cov[-1].mean() > 0.5, cov  # 99% intervals that miss most truths are broken
    auto = cal["auto"]
    # (times measured, not compared: 8 refinements of ~1 ms each are within a shared machine's noise)
    assert 0 <= auto["share_refined"] <= 1 and all(auto["seconds_per_sample"][k] > 0 for k in ("never", "always"))
    assert auto["r2"]["always"]["value"] >= auto["r2"]["never"]["value"]
    # Table 1's "Deep Inference + refine" row is that refined run, on the same samples
    refine_row = next(r for r in rows if r["method"] == "Deep Inference + refine")
    assert float(refine_row["R2"]) == pytest.approx(auto["r2"]["always"]["value"], abs=1e-5)  # as the CSV rounds
    assert float(refine_row["time per sample CPU (s)"]) == pytest.approx(auto["seconds_per_sample"]["always"], rel=1e-3)
    cal_rows = list(csv.DictReader((report / "calibration.csv").open()))
    assert {r["estimate"] for r in cal_rows} >= {"network", "refined"} and len({r["parameter"] for r in cal_rows}) == 4
    # coverage among the samples that determine each parameter: a share of their number,
    # consistent with the per-sample determined shares; the page says which fall outside
    det = cal["coverage_95_determined"]["refined"]
    counts = np.array(det["samples"])
    np.testing.assert_array_equal(counts, np.round(np.array(cal["determined"]["refined"]) * 8))
    for x, n in zip(det["coverage"], counts):
        assert (x is None) == (n == 0) and (x is None or (abs(x * n - round(x * n)) < 1e-9 and 0 <= x <= 1))
    md = (report / "calibration.md").read_text()
    assert 'refine="auto"' in md and "95% coverage among the test samples whose observations determine" in md
    assert "Refined, determined:" in md and "parameters within [0.90, 0.98]" in md
    for name in ("calibration_mmk.png", "interval_widths_mmk.png", "bands_mmk.png"):
        assert (report / name).stat().st_size > 0 and name in model["calibration_figures"]
    # coverage measured on more samples than Table 1's (the small preset's 512): the
    # refine row takes Table 1's samples from it, and is left out where it missed some
    from mechinfer.evaluate import report as evaluate

    for samples, present in ((12, True), (4, False)):
        result = evaluate.evaluate_model(str(out), coverage_samples=samples, n_boot=10, online_samples=1)
        by = {r["method"]: r for r in result["rows"]}
        assert ("Deep Inference + refine" in by) == present
        if present:
            assert by["Deep Inference + refine"]["r2"].value == pytest.approx(float(refine_row["R2"]), abs=1e-5)


def test_time_budget_leaves_later_tasks_out(ray_local, tmp_path):
    """With a budget (and no chunk_size) the test set is split into BUDGETED_CHUNKS tasks;
    a task that would start past the budget fits nothing and its samples are left out of
    the results and counted, the first task always fits, and the result is complete. The
    report's test rows are the fitted ones."""
    from mechinfer.evaluate import report
    from mechinfer.models import load_model

    out = tmp_path / "baseline"
    settings = dict(limit=4, starts=[1, 2], max_iter=30, optimizers=["bfgs"], budget_s=1e-6)
    first = baseline.run_baseline("mmk", str(out), **settings)
    assert (first.chunks, first.samples, first.skipped) == (4, 1, 3)  # BUDGETED_CHUNKS, at most one per sample
    assert "3 left out past the time budget" in str(first)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["budget_s"] == 1e-6 and manifest["samples_skipped"] == 3 and manifest["n_samples"] == 1
    assert manifest["optimizers_skipped"] == {}  # the optimizers that did not apply: none for mmk
    fits = pq.read_table(out / "multistart.parquet")
    assert set(fits["sample_id"].to_pylist()) == {0}
    rows = report._test_rows(load_model("mmk"), manifest, fits)
    assert rows["sample_id"].tolist() == [0]
    with pytest.raises(FileExistsError, match="already holds a complete baseline"):  # complete: it says what it left
        baseline.run_baseline("mmk", str(out), **settings)


def test_killed_worker_chunk_is_retried(ray_local, tmp_path):
    out = tmp_path / "killed"
    result = {}
    job = threading.Thread(
        target=lambda: result.update(
            summary=baseline.run_baseline(
                "mmk", str(out), limit=64, chunk_size=32, starts=[1, 2], max_iter=60, optimizers=["bfgs"]
            )
        )
    )
    job.start()
    killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and job.is_alive():
        pids = pids_of(b"ray::_run_chunk")
        if pids:  # its process title says it runs the task now (a chunk of 8 fits took < 50 ms)
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    job.join(timeout=600)
    assert killed is not None, "a worker was killed mid-task"
    assert result["summary"].samples == 64
    fits = _fits(out).to_pydict()
    assert sorted(zip(fits["method"], fits["sample_id"], fits["start"])) == sorted(
        [("prior", s, k) for s in range(64) for k in range(2)] + [("network", s, 0) for s in range(64)]
    )
    assert not list(out.glob("_tmp-*"))
    again = tmp_path / "again"
    baseline.run_baseline("mmk", str(again), limit=64, chunk_size=32, starts=[1, 2], max_iter=60, optimizers=["bfgs"])
    np.testing.assert_allclose(np.array(_fits(again)["z"].to_pylist()), np.array(fits["z"]), rtol=1e-9, atol=1e-12)


def test_interrupted_baseline_resumes_on_rerun(ray_local, tmp_path):
    """A rerun of a baseline job killed before its last chunk and its outputs (its intent
    file and finished part files left behind) fits only that chunk and ends with the
    result of an uninterrupted run."""
    settings = dict(limit=6, chunk_size=2, starts=[1, 2], max_iter=20)
    out = tmp_path / "baseline"
    baseline.run_baseline("mmk", str(out), **settings)
    whole, multistart = _fits(out), pq.read_table(out / baseline.MULTISTART)
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("manifest.json", baseline.MULTISTART, "part-000000000004.parquet"):
        (out / name).unlink()
    intent = ("model", "checkpoint_id", "test_set", "starts", "seed", "chunk_size", "max_iter", "optimizers")
    (out / baseline.INTENT).write_text(json.dumps({k: manifest[k] for k in intent}))
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert sorted(kept) == ["part-000000000000.parquet", "part-000000000002.parquet"]

    summary = baseline.run_baseline("mmk", str(out), **settings)
    assert (summary.chunks, summary.chunks_resumed) == (3, 2)
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not fitted again
    again = _fits(out)
    for column in ("sample_id", "method", "start", "iterations", "evaluations", "status", "checkpoint_id"):
        assert again[column].equals(whole[column]), column
    for column in ("z", "nll"):
        np.testing.assert_allclose(np.array(again[column].to_pylist()), np.array(whole[column].to_pylist()), rtol=1e-9)
    assert pq.read_table(out / baseline.MULTISTART).drop(["seconds"]).equals(multistart.drop(["seconds"]))
    assert (out / "manifest.json").exists() and not (out / baseline.INTENT).exists()


def _job(name, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / name), *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


@pytest.mark.slow
def test_bad_input_is_refused(ray_local, tmp_path, run_cli):
    # the job file itself, as `ray job submit` runs it
    run = _job("baseline.py", "--model", "mmk", "--out", str(tmp_path / "a"), "--checkpoint", str(tmp_path / "no"))
    assert run.returncode == 2 and "is not a mechinfer checkpoint" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    cases = [
        (("--model", "ecoli", "--out", str(tmp_path / "b"), "--checkpoint", "mmk"), "is for 'mmk', not 'ecoli'"),
        (("--model", "mmk", "--out", str(tmp_path / "c"), "--starts", "0"), "starts must be a positive integer"),
        (("--model", "mmk", "--out", str(tmp_path / "d"), "--starts", "1,-2"), "starts must be a positive integer"),
        (
            ("--model", "mmk", "--out", str(tmp_path / "e"), "--starts", "two"),
            "argument --starts: must be comma-separated integers",
        ),
        (("--model", "yeast", "--out", str(tmp_path / "f")), "unknown model 'yeast'"),
    ]
    simulate_dataset("mmk", 10, 0, str(tmp_path / "mmk-set"), chunk_size=10)
    cases.append(
        (
            ("--model", "ecoli", "--out", str(tmp_path / "g"), "--test-set", str(tmp_path / "mmk-set")),
            "holds 'mmk' samples, not 'ecoli'",
        )
    )
    for args, message in cases:
        status, _, err = run_cli("baseline", *args)
        assert status == 2 and message in err, (args, err)
        assert "Traceback" not in err
    status, _, err = run_cli("evaluate", "--baseline", str(tmp_path / "mmk-set"), "--out", str(tmp_path / "r"))
    assert status == 2 and "is not a baseline result" in err and "Traceback" not in err
    status, _, err = run_cli("evaluate", "--baseline", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"))
    assert status == 2 and "has no manifest.json" in err
    status, _, err = run_cli(
        "evaluate", "--baseline", str(tmp_path / "x"), "--out", str(tmp_path / "r"), "--network", "mmk"
    )
    assert status == 2 and "--network takes MODEL=PATH" in err
    for out in "bcdefgr":
        assert not (tmp_path / out).exists(), "nothing written for refused input"
