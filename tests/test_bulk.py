"""Bulk estimation (SPEC 10) and ``mechinfer.observations_from_frame`` (SPEC 8): long
tables into est.infer's arrays with per-experiment errors; the Ray Data job on the
example tables (embedded here; submitted to a `ray start --head` cluster in
test_cluster.py, on S3 in test_s3.py), refine auto,
resumption after a killed job, a killed estimator actor, and bad input."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from processes import pids_of

import mechinfer
from mechinfer import cli
from mechinfer.data.samples import simulate_chunk
from mechinfer.estimate import bulk
from mechinfer.estimate.frame import to_table

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ecoli_experiments.csv"
BAD = {
    "run-04": "unknown channel 'Glc'",
    "run-09": "time 7.5 h lies outside [0, 6] h",
    "run-15": "a value is not a finite number (nan)",
}


@pytest.fixture(scope="module")
def ecoli():
    return mechinfer.load_estimator("ecoli")


def _simulated(model: str, n: int, seed: int = 3, ids=None) -> tuple[pa.Table, dict]:
    rows = simulate_chunk(mechinfer.get_model(model), seed, 0, n)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    return to_table(ids, rows["t"], rows["channel"], rows["value"], model), rows


# ----------------------------------------------------------- observations_from_frame
def test_observations_from_frame_gives_infer_arrays():
    table, rows = _simulated("ecoli", 12, ids=[f"e{i}" for i in range(12)])
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    first_seen = list(dict.fromkeys(shuffled["experiment"].to_pylist()))
    for frame in (shuffled, shuffled.to_pandas()):
        obs = mechinfer.observations_from_frame(frame, "ecoli")
        assert obs.experiments.tolist() == first_seen  # order of first appearance
        assert obs.error == [None] * 12 and obs.ok.all() and obs.t.shape == (12, 30)
        back = [int(e[1:]) for e in obs.experiments]
        np.testing.assert_array_equal(obs.t, rows["t"][back])  # each experiment's rows sorted by time
        np.testing.assert_array_equal(obs.channel, rows["channel"][back])
        np.testing.assert_array_equal(obs.value, rows["value"][back])
        np.testing.assert_array_equal(obs.n_rows, 30)
    obs = mechinfer.observations_from_frame(shuffled, mechinfer.get_model("ecoli"), sort=True)
    assert obs.experiments.tolist() == sorted(first_seen)


def test_ragged_experiments_are_nan_padded():
    df = pd.DataFrame(
        {
            "experiment": [7, 7, 7, 3],
            "t": [0.5, 0.1, 1.0, 0.2],
            "channel": ["S", "P", "S", "P"],
            "value": [1, 2, 3, 4.0],
        }
    )
    obs = mechinfer.observations_from_frame(df, "mmk")
    assert obs.experiments.tolist() == [7, 3] and obs.experiments.dtype == np.int64
    np.testing.assert_array_equal(obs.t, [[0.1, 0.5, 1.0], [0.2, np.nan, np.nan]])
    np.testing.assert_array_equal(obs.channel, [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(obs.value, [[2, 1, 3], [4, np.nan, np.nan]])


def test_bad_rows_set_their_experiments_error_only():
    table, rows = _simulated("mmk", 9)
    df = table.to_pandas()
    first = lambda e: df.index[df.experiment == e][3]
    df = df.astype({"t": object, "channel": object})
    df.loc[first(1), "channel"] = "E"
    df.loc[first(2), "t"] = 2.5
    df.loc[first(3), "t"] = -0.1
    df.loc[first(4), "value"] = np.inf
    df.loc[first(5), "value"] = np.nan
    df.loc[first(6), "channel"] = None
    df.loc[first(7), "t"] = "soon"
    df.loc[df.index[df.experiment == 8][[1, 2]], "channel"] = "E"
    obs = mechinfer.observations_from_frame(df, "mmk")
    assert obs.error == [
        None,
        "unknown channel 'E' (mmk observes S, P)",
        "time 2.5 h lies outside [0, 2] h",
        "time -0.1 h lies outside [0, 2] h",
        f"a value is not a finite number (inf) at t = {df.t[first(4)]:g} h",
        f"a value is not a finite number (nan) at t = {df.t[first(5)]:g} h",
        "a row has no channel",
        "a time is not a finite number (nan)",
        "unknown channel 'E' (mmk observes S, P) (and 1 more bad row)",
    ]
    assert obs.ok.tolist() == [True] + [False] * 8
    assert np.isnan(obs.t[1:]).all() and np.isnan(obs.value[1:]).all()  # no estimate from bad experiments
    np.testing.assert_array_equal(obs.value[0], rows["value"][0])
    np.testing.assert_array_equal(obs.n_rows, 14)
    placeholder = pd.DataFrame({"experiment": [99], "t": [None], "channel": [None], "value": [None]})
    obs = mechinfer.observations_from_frame(pd.concat([df[df.experiment == 0], placeholder]), "mmk")
    assert obs.error == [None, "no observations"] and obs.n_rows.tolist() == [14, 0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop(columns=["t", "value"]), "the table lacks columns t, value"),
        (lambda df: df.rename(columns={"channel": "name"}), "the table lacks column channel"),
        (lambda df: df.assign(experiment=df.experiment.astype(float)), "must hold strings or integers, not double"),
        (lambda df: df.assign(experiment=[None, *df.experiment[1:]]), "1 row(s) have no experiment id"),
        (lambda df: df.assign(experiment=["a", *df.experiment[1:]]), "experiment column must hold strings or"),
    ],
)
def test_a_table_it_cannot_read_is_refused(change, message):
    df = _simulated("mmk", 2)[0].to_pandas()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mechinfer.observations_from_frame(change(df), "mmk")


def test_frame_arrays_estimate_as_the_originals(ecoli):
    _, rows = _simulated("ecoli", 6)
    obs = mechinfer.observations_from_frame(pd.read_csv(EXAMPLE), "ecoli")
    direct = ecoli.infer(obs.t[obs.ok], obs.channel[obs.ok], obs.value[obs.ok])
    assert len(direct.theta) == 17 and set(obs.experiments[~obs.ok]) == set(BAD)
    for e, message in BAD.items():
        assert message in obs.error[obs.experiments.tolist().index(e)]
    table, rows = _simulated("ecoli", 6)
    obs = mechinfer.observations_from_frame(table, "ecoli")
    np.testing.assert_allclose(
        ecoli.infer(obs.t, obs.channel, obs.value).theta, ecoli.infer(rows["t"], rows["channel"], rows["value"]).theta
    )


# --------------------------------------------------------------------- the job
def _run(args, capsys) -> tuple[int, str, str]:
    """``mechinfer estimate ARGS`` in this process (the session's Ray)."""
    handlers = logging.getLogger().handlers[:]
    try:
        status = cli.main(["estimate", *map(str, args)])
    finally:  # cli.main's log handler writes to this test's captured stderr: not beyond it
        logging.getLogger().handlers[:] = handlers
    out = capsys.readouterr()
    return status, out.out, out.err


def _rows(location) -> pd.DataFrame:
    return bulk.read_estimates(str(location)).to_pandas().set_index("experiment")


def _check_against_infer(est, table_or_path, out: pd.DataFrame, refine=False, rtol=1e-5, level=0.95, **fit_options):
    """The job's rows equal est.infer on observations_from_frame's arrays."""
    frame = pd.read_csv(table_or_path) if isinstance(table_or_path, Path) else table_or_path
    obs = mechinfer.observations_from_frame(frame, est.model)
    ok = obs.ok
    res = est.infer(obs.t[ok], obs.channel[ok], obs.value[ok], refine=refine, level=level, **fit_options)
    rows = out.loc[obs.experiments[ok]]
    names = list(est.model.parameter_names)
    np.testing.assert_allclose(rows[names].to_numpy(), res.theta, rtol=rtol)
    np.testing.assert_allclose(rows[[f"{n}_low" for n in names]].to_numpy(), res.lower, rtol=rtol)
    np.testing.assert_allclose(rows[[f"{n}_high" for n in names]].to_numpy(), res.upper, rtol=rtol)
    np.testing.assert_allclose(rows["nll"].to_numpy(), res.nll, rtol=rtol)
    np.testing.assert_allclose(rows["gof_pvalue"].to_numpy(), res.gof_pvalue, rtol=max(rtol, 1e-4), atol=1e-12)
    assert rows["refine_status"].tolist() == res.refine_status.tolist()
    assert (rows[[f"{n}_determined" for n in names]].to_numpy() == res.determined).all()
    assert (rows["n_observations"] == res.n_observations).all()
    return obs, res


def test_example_table_then_overwritten_with_refine_auto(ray_local, tmp_path, capsys, ecoli):
    out = tmp_path / "est"
    status, stdout, _ = _run(["--model", "ecoli", "--input", EXAMPLE, "--output", out, "--chunk-size", 8], capsys)
    assert status == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["experiments"], summary["estimated"], summary["errors"], summary["parts"]) == (20, 17, 3, 3)
    assert summary["refine_status"] == {"not_requested": 17}
    assert "estimated 17 of 20 ecoli experiments" in stdout and "3 with errors" in stdout
    rows = _rows(out)
    assert rows.index.tolist() == [f"run-{i:02d}" for i in range(1, 21)]  # each once, sorted
    names = list(ecoli.model.parameter_names)
    table = bulk.read_estimates(str(out))
    estimates = [f"{n}{s}" for n in names for s in ("", "_low", "_high", "_determined")]
    assert table.column_names == [
        "experiment",
        *estimates,
        *("level", "nll", "gof_pvalue", "refine_status", "n_observations", "error"),
    ]
    assert all(table[c].null_count == 3 for c in [*estimates, "nll", "gof_pvalue", "refine_status"])  # nulls
    assert table["error"].null_count == 17
    for e, message in BAD.items():
        assert message in rows.loc[e, "error"]
        assert rows.loc[e, [*names, "nll", "gof_pvalue", "refine_status"]].isna().all()  # no estimate
    good = rows[rows.error.isna()]
    assert len(good) == 17 and good[names].notna().all().all()
    assert (good[[f"{n}_low" for n in names]].to_numpy() < good[[f"{n}_high" for n in names]].to_numpy()).all()
    assert (rows.level == 0.95).all() and (rows.n_observations == 30).all()
    _check_against_infer(ecoli, EXAMPLE, rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_version"] == mechinfer.SPEC_VERSION and manifest["kind"] == "estimate"
    assert (manifest["model"], manifest["checkpoint_id"], manifest["level"], manifest["refine"]) == (
        "ecoli",
        ecoli.checkpoint_id,
        0.95,
        "never",
    )
    assert (manifest["experiments"], manifest["estimated"], manifest["errors"]) == (20, 17, 3)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "part-000000000000.parquet",
        "part-000000000008.parquet",
        "part-000000000016.parquet",
    ]
    # a complete result is refused without --overwrite (as a dataset), replaced with it
    status, _, err = _run(["--model", "ecoli", "--input", EXAMPLE, "--output", out], capsys)
    assert status == 2 and "already holds a complete estimate result" in err
    # --overwrite replaces it: here with --refine auto, which refines the bad fits only
    again = ["--model", "ecoli", "--input", EXAMPLE, "--output", out, "--overwrite", "--refine", "auto", "--level", 0.9]
    status, stdout, _ = _run(again, capsys)
    summary = json.loads(stdout.splitlines()[-1])
    assert status == 0 and summary["parts"] == 1  # one part: the network sees one batch, as est.infer below
    rows = _rows(out)
    assert (rows.level == 0.9).all()
    obs, _ = _check_against_infer(ecoli, EXAMPLE, rows, refine="auto", rtol=1e-4, level=0.9)
    skipped = rows.refine_status == "skipped"
    network = ecoli.infer(obs.t[obs.ok], obs.channel[obs.ok], obs.value[obs.ok])
    assert skipped.sum() == (network.gof_pvalue >= 0.05).sum() and 0 < skipped.sum() < 17
    assert rows[rows.error.isna() & ~skipped].refine_status.isin(["converged", "iteration_limit"]).all()
    assert summary["refine_status"]["skipped"] == skipped.sum() and summary["errors"] == 3
    assert sum(summary["refine_status"].values()) == 17


def test_mmk_example_with_integer_ids(ray_local, tmp_path):
    """Integer ids; every experiment refined, from 3 starts each (the network's estimate
    and 2 draws of its approximation), as est.infer(refine=True, starts=3) refines them."""
    out, path = tmp_path / "mmk", REPO / "examples" / "mmk_experiments.csv"
    summary = bulk.estimate_table("mmk", str(path), str(out), refine="always", refine_starts=3)
    rows = _rows(out)
    assert rows.index.tolist() == list(range(1, 13))  # integers as written in the CSV, sorted as numbers
    assert rows.loc[5, "error"] == "time -0.5 h lies outside [0, 2] h"
    assert (summary.estimated, summary.errors) == (11, 1)
    assert rows.refine_status.dropna().isin(["converged", "iteration_limit"]).all()
    assert json.loads((out / "manifest.json").read_text())["refine_starts"] == 3
    _check_against_infer(mechinfer.load_estimator("mmk"), path, rows, refine=True, rtol=1e-4, starts=3)


def _big_input(tmp_path, n=600) -> Path:
    path = tmp_path / "obs"
    path.mkdir()
    table, _ = _simulated("mmk", n, seed=5)
    half = table.num_rows // 2 + 7  # two files, an experiment split between them
    pq.write_table(table.slice(0, half), path / "a.parquet", row_group_size=2000)
    pq.write_table(table.slice(half), path / "b.parquet", row_group_size=2000)
    (path / "_SUCCESS").write_text("")
    return path


def _once_each(location, n):
    ids = bulk.read_estimates(str(location))["experiment"].to_numpy()
    assert np.array_equal(ids, np.arange(n)), "every experiment exactly once"


def test_interrupted_job_resumes(ray_local, tmp_path, monkeypatch):
    """An interrupted run leaves some parts, its intent file, a temporary file cut short
    and the lock of its dead process, and no manifest; the rerun keeps those parts,
    writes the others once, and cleans up."""
    source, out = _big_input(tmp_path), tmp_path / "est"
    write_json = bulk.storage.write_json

    def interrupted(fs, path, data):
        if path.endswith("/manifest.json"):
            raise KeyboardInterrupt("interrupted before the manifest")
        write_json(fs, path, data)

    monkeypatch.setattr(bulk.storage, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bulk.estimate_table("mmk", str(source), str(out), chunk_size=15)
    monkeypatch.undo()
    parts = sorted(out.glob("part-*"))
    assert len(parts) == 40 and (out / bulk.INTENT).exists() and not (out / "manifest.json").exists()
    for p in parts[10:]:  # the parts an interruption at the 11th would not have written
        p.unlink()
    (out / "_tmp-0123-part-000000000300.parquet").write_bytes(b"PAR1 cut short")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / "_lock.json").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "what": "estimate"}))
    stamps = {p.name: p.stat().st_mtime_ns for p in parts[:10]}
    summary = bulk.estimate_table("mmk", str(source), str(out), chunk_size=15)
    assert (summary.parts, summary.parts_resumed) == (40, 10)
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())  # kept, not redone
    _once_each(out, 600)
    assert not list(out.glob("_*"))  # no intent, lock or temporary file left
    _check_against_infer(mechinfer.load_estimator("mmk"), pq.read_table(source), _rows(out))


def test_killed_estimator_actor_leaves_each_experiment_once(ray_local, tmp_path):
    source, out = _big_input(tmp_path), tmp_path / "est"
    result = {}
    job = threading.Thread(
        target=lambda: result.update(
            summary=bulk.estimate_table("mmk", str(source), str(out), chunk_size=15, batch_size=1)
        )
    )
    job.start()
    killed, parts_then = None, None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and job.is_alive():
        # an actor inside a task (Ray titles it so while the task runs), once parts are being written
        pids = pids_of(b"ray::MapWorker(MapBatches(_Estimator)).submit")
        if pids and len(list(out.glob("part-*"))) >= 2:
            killed = pids[0]
            parts_then = len(list(out.glob("part-*")))
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    job.join(timeout=300)
    assert killed is not None and parts_then < 40, "an estimator actor was killed mid-job"
    assert result["summary"].parts == 40 and result["summary"].estimated == 600
    _once_each(out, 600)


# ------------------------------------------------------------------ bad input
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, run_cli):
    good = pd.read_csv(EXAMPLE)
    (tmp_path / "cols.csv").write_text(good.drop(columns=["value"]).to_csv(index=False))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (tmp_path / "notes.txt").write_text("experiment,t,channel,value\n")
    pq.write_table(pa.Table.from_pandas(good.rename(columns={"t": "time"})), tmp_path / "cols.parquet")
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.Table.from_pandas(good), tmp_path / "mixed" / "a.parquet")
    pq.write_table(pa.Table.from_pandas(good.assign(experiment=1)), tmp_path / "mixed" / "b.parquet")
    pq.write_table(pa.Table.from_pandas(good.assign(experiment=1.5)), tmp_path / "float.parquet")
    cases = [
        ("cols.csv", "cols.csv: the table lacks column value"),
        ("cols.parquet", "cols.parquet: the table lacks column t (a long table needs experiment, t, channel, value)"),
        ("junk.parquet", "cannot read input"),
        ("notes.txt", "must be a Parquet or CSV file"),
        ("missing.csv", "no such file or directory"),
        ("mixed", "experiment ids are integers in"),
        ("float.parquet", "the experiment column must hold strings or integers, not double"),
    ]
    for name, message in cases:
        out = tmp_path / f"out-{name}"
        status, _, stderr = run_cli(
            "estimate", "--model", "ecoli", "--input", str(tmp_path / name), "--output", str(out)
        )
        assert status == 2, (name, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("estimate: error: ") and message in lines[-1], (name, stderr)
        assert "Traceback" not in stderr and not out.exists(), name
    for flags, message in (
        (("--level", "2"), "level must lie in [0.5, 0.999]"),
        (("--checkpoint", "mmk"), "checkpoint mmk is for 'mmk', not 'ecoli'"),
        (("--chunk-size", "0"), "chunk_size must be a positive integer"),
        (("--refine", "always", "--refine-starts", "0"), "refine starts must be an integer from 1 to 64, got 0"),
    ):
        out = tmp_path / "out-flags"
        status, _, stderr = run_cli(
            "estimate", "--model", "ecoli", "--input", str(EXAMPLE), "--output", str(out), *flags
        )
        assert status == 2 and message in stderr and not out.exists(), stderr
    # the job file itself, as `ray job submit` runs it
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "estimate.py"),
            "--model",
            "ecoli",
            "--input",
            str(tmp_path / "cols.csv"),
            "--output",
            str(tmp_path / "out-job"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 2 and "estimate: error: " in run.stderr and "lacks column value" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out-job").exists()


def test_bad_input_found_while_reading_stops_before_writing(ray_local, tmp_path, capsys):
    """A row that cannot be parsed deep in a CSV (past the first block, which the driver
    checks) surfaces only when Ray Data reads it: the job still stops with one line and
    the output untouched."""
    table, _ = _simulated("mmk", 3000)
    lines = pd.DataFrame(table.to_pydict()).to_csv(index=False).splitlines()
    lines.insert(len(lines) - 5, "2999,1.0,S")  # one field short
    (tmp_path / "broken.csv").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "broken.csv").stat().st_size > 1 << 20  # pyarrow's CSV block: what the driver reads
    out = tmp_path / "out"
    status, _, stderr = _run(["--model", "mmk", "--input", tmp_path / "broken.csv", "--output", out], capsys)
    assert status == 2 and "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if "error" in line]
    assert line.startswith("estimate: error: cannot read input") and "Expected 4 columns, got 3" in line
    assert not out.exists()
