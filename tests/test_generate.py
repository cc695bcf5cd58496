"""The Ray Data simulation job: format, determinism, faults and bad input (SPEC 5, 6.1)."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from processes import pids_of

import mechinfer
from mechinfer.data import format as dataset
from mechinfer.data.generate import simulate_dataset

REPO = Path(__file__).resolve().parents[1]


def _rows(path):
    return dataset.read_table(str(path)).to_pydict()


def test_format_and_content(ray_local, tmp_path):
    out = tmp_path / "mmk"
    summary = simulate_dataset("mmk", 300, 7, str(out), chunk_size=128)
    assert summary.samples == 300 and summary.failures == 0 and summary.chunks == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_version"] == 1 and manifest["model"] == "mmk"
    assert manifest["n_samples"] == 300 and manifest["seed"] == 7
    assert manifest["T"] == 2.0 and manifest["n_obs"] == 14 and manifest["sigma"] == {"S": 0.5, "P": 0.5}
    assert manifest["code_version"] and manifest["created"]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "part-000000000000.parquet",
        "part-000000000128.parquet",
        "part-000000000256.parquet",
    ]

    table = dataset.read_table(str(out))
    assert table.schema.equals(dataset.schema(mechinfer.get_model("mmk")))
    assert table["sample_id"].to_pylist() == list(range(300))
    m = mechinfer.get_model("mmk")
    theta = np.array(table["theta"].to_pylist())
    np.testing.assert_array_equal(theta, m.sample_prior(300, seed=7))
    np.testing.assert_allclose(np.array(table["z"].to_pylist()), m.to_z(theta), rtol=1e-6, atol=1e-6)
    t = np.array(table["t"].to_pylist())
    assert (np.diff(t, axis=1) >= 0).all() and t.min() >= 0 and t.max() <= m.T
    ch = np.array(table["channel"].to_pylist())
    clean = np.array(table["clean"].to_pylist())
    y = m.simulate(theta, t.astype(np.float64))
    np.testing.assert_allclose(clean, np.take_along_axis(y, ch[..., None], 2)[..., 0], rtol=1e-5, atol=1e-5)
    noise = (np.array(table["value"].to_pylist()) - clean) / m.sigma[ch]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
    assert set(table["status"].to_pylist()) == {0}


def test_same_rows_whatever_the_blocks(ray_local, tmp_path):
    simulate_dataset("ecoli", 400, 3, str(tmp_path / "one"), chunk_size=100, num_blocks=1)
    simulate_dataset("ecoli", 400, 3, str(tmp_path / "four"), chunk_size=100, num_blocks=4)
    one, four = _rows(tmp_path / "one"), _rows(tmp_path / "four")
    assert one == four
    assert len(set(one["sample_id"])) == 400


def test_same_rows_whatever_the_chunk_size(ray_local, tmp_path):
    """Chunks of 1024 and more (where the torch steps were compiled) and smaller ones give
    the same rows: the CPU solver integrates each sample on its own."""
    simulate_dataset("ecoli", 2048, 5, str(tmp_path / "big"), chunk_size=2048, num_blocks=1)
    simulate_dataset("ecoli", 2048, 5, str(tmp_path / "small"), chunk_size=512, num_blocks=2)
    big, small = _rows(tmp_path / "big"), _rows(tmp_path / "small")
    assert big == small and len(set(big["sample_id"])) == 2048


def test_unsolvable_draws_are_flagged_and_counted(ray_local, tmp_path):
    out = tmp_path / "fail"
    summary = simulate_dataset("ecoli", 50, 0, str(out), chunk_size=25, solver_options={"max_steps": 3})
    table = dataset.read_table(str(out))
    assert table.num_rows == 50, "failed draws are kept, never dropped"
    status = np.array(table["status"].to_pylist())
    assert (status != 0).all() and summary.failures == 50
    assert json.loads((out / "manifest.json").read_text())["failures"] == 50
    assert np.isnan(np.array(table["clean"].to_pylist())).all(), "no garbage numbers for a failed solve"
    assert np.isnan(np.array(table["value"].to_pylist())).all()


def test_existing_dataset_is_refused_unless_overwrite(ray_local, tmp_path):
    out = tmp_path / "ds"
    simulate_dataset("mmk", 20, 0, str(out), chunk_size=10)
    before = (out / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="already holds a complete dataset"):
        simulate_dataset("mmk", 20, 1, str(out), chunk_size=10)
    assert (out / "manifest.json").read_text() == before
    simulate_dataset("mmk", 30, 1, str(out), chunk_size=10, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["n_samples"] == 30
    assert dataset.read_table(str(out)).num_rows == 30


def test_interrupted_run_resumes(ray_local, tmp_path):
    out = tmp_path / "ds"
    simulate_dataset("mmk", 40, 0, str(out), chunk_size=10)
    reference = _rows(out)
    # as if the job had died before its last chunk and its manifest
    (out / "manifest.json").unlink()
    (out / "part-000000000030.parquet").unlink()
    with pytest.raises(ValueError, match="has no manifest.json"):
        dataset.read_table(str(out))
    (out / "_simulation.json").write_text(
        json.dumps({"model": "mmk", "n_samples": 40, "seed": 0, "chunk_size": 10, "solver_options": {}})
    )
    summary = simulate_dataset("mmk", 40, 0, str(out), chunk_size=10)
    assert summary.chunks_resumed == 3
    assert _rows(out) == reference


@pytest.mark.parametrize("kind", ["dataset", "estimate result"])
def test_a_rerun_resumes_only_the_same_unfinished_run(tmp_path, kind):
    """prepare_location (the simulation's, bulk estimation's and the baseline's) keeps the
    parts of an unfinished run only for a rerun with the same parameters (its intent file)
    and without overwrite: another setting, another input (bulk estimation's input
    fingerprint), overwrite, or parts without an intent file start over, so that a part of
    another run is never kept as this run's."""
    from mechinfer import storage
    from mechinfer.estimate import bulk

    out = tmp_path / "out"
    fs, root = storage.resolve(str(out))
    where = {"dataset": {}, "estimate result": {"intent": bulk.INTENT, "what": kind}}[kind]
    intent = out / where.get("intent", dataset.INTENT)
    params = {"model": "mmk", "input_fingerprint": "abc", "level": 0.95, "seed": 0, "chunk_size": 10}
    parts = [dataset.part_name(0), dataset.part_name(10)]

    def interrupted(run_params):  # parts and the run's intent file; no manifest
        out.mkdir(exist_ok=True)
        for name in parts:
            (out / name).write_bytes(b"PAR1")
        intent.unlink(missing_ok=True)
        if run_params is not None:
            intent.write_text(json.dumps(run_params))

    def rerun(run_params, overwrite=False):
        kept = dataset.prepare_location(fs, root, str(out), run_params, overwrite, **where)
        assert json.loads(intent.read_text()) == run_params  # the rerun's own intent, for its own rerun
        return kept, sorted(p.name for p in out.glob("part-*"))

    interrupted(params)
    assert rerun(dict(params)) == (set(parts), parts)
    for changed in ({**params, "input_fingerprint": "def"}, {**params, "level": 0.9}, {**params, "seed": 1}):
        interrupted(params)
        assert rerun(changed) == (set(), []), changed
    interrupted(params)
    assert rerun(params, overwrite=True) == (set(), [])
    interrupted(None)
    assert rerun(params) == (set(), [])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(model="yeast", n=10), ValueError, "unknown model 'yeast'"),
        (dict(model="mmk", n=0), ValueError, "n must be a positive integer"),
        (dict(model="mmk", n=-5), ValueError, "n must be a positive integer"),
        (dict(model="mmk", n=10, chunk_size=0), ValueError, "chunk_size must be a positive integer"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        simulate_dataset(seed=0, out=str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists()


def test_unwritable_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="is a file"):
        simulate_dataset("mmk", 10, 0, str(blocker))
    with pytest.raises(ValueError, match="cannot write to output location"):
        simulate_dataset("mmk", 10, 0, str(blocker / "ds"))
    with pytest.raises(ValueError, match="cannot use 'nosuchscheme://x'"):
        simulate_dataset("mmk", 10, 0, "nosuchscheme://x")


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files that are not part of a dataset: notes.txt"):
        simulate_dataset("mmk", 10, 0, str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _task_pids():
    return pids_of(b"ray::MapBatches(_write_chunks)")


def test_killed_worker_loses_no_sample(ray_local, tmp_path):
    out = tmp_path / "ds"
    result = {}
    job = threading.Thread(
        target=lambda: result.update(summary=simulate_dataset("ecoli", 4800, 11, str(out), chunk_size=400))
    )
    job.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and job.is_alive():
        pids = _task_pids()  # read once: a task may end between two reads
        if len(list(out.glob("part-*"))) >= 2 and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    job.join(timeout=300)
    assert killed is not None, "a worker was killed mid-job"
    assert result["summary"].samples == 4800
    table = dataset.read_table(str(out))
    ids = table["sample_id"].to_pylist()
    assert sorted(ids) == list(range(4800)), "every sample_id exactly once"
    assert not list(out.glob("_tmp-*"))
    # the retried chunk is the same as an undisturbed run's
    again = tmp_path / "again"
    simulate_dataset("ecoli", 4800, 11, str(again), chunk_size=400)
    assert _rows(out) == _rows(again)


@pytest.mark.slow
def test_job_cli(ray_local, tmp_path, run_cli, capsys):
    """`mechinfer simulate` in this process, on the session's Ray (jobs/simulate.py runs as
    a process of its own in test_cluster.py, submitted to a `ray start --head`)."""
    import logging

    from mechinfer import cli

    out = tmp_path / "cli"
    handlers = logging.getLogger().handlers[:]
    try:
        args = ["--model", "mmk", "--n", "200", "--seed", "0", "--out", str(out), "--chunk-size", "100"]
        status = cli.main(["simulate", *args])
    finally:  # cli.main's log handler writes to this test's captured stderr: not beyond it
        logging.getLogger().handlers[:] = handlers
    stdout = capsys.readouterr().out
    assert status == 0
    assert "simulated 200 mmk samples" in stdout and "0 failed solves" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["samples"] == 200 and summary["samples_per_s"] > 0
    assert pq.read_table(out / "part-000000000100.parquet").num_rows == 100
    status, _, err = run_cli("simulate", "--model", "mmk", "--n", "200", "--seed", "0", "--out", str(out))
    assert status == 2 and "already holds a complete dataset" in err and "Traceback" not in err
    status, _, err = run_cli("simulate", "--model", "yeast", "--n", "10", "--out", str(tmp_path / "x"))
    assert status == 2 and "unknown model 'yeast'" in err and "Traceback" not in err
    status, _, err = run_cli("simulate", "--model", "mmk", "--n", "0", "--out", str(tmp_path / "y"))
    assert status == 2 and "n must be a positive integer" in err


def test_second_writer_is_refused_and_a_dead_ones_lock_taken_over(ray_local, tmp_path, caplog):
    """A second job on an output directory in use is refused with the holder's name and
    deletes nothing; the lock left by a killed job is taken over with a warning."""
    import socket

    from mechinfer import storage

    out = tmp_path / "ds"
    simulate_dataset("mmk", 20, 0, str(out), chunk_size=10)
    before = sorted(p.name for p in out.iterdir())
    with storage.lock(str(out), "dataset"):  # a writer at work (this process)
        message = rf"in use by another dataset writer: pid {os.getpid()} on host"
        with pytest.raises(storage.LocationInUse, match=message):
            simulate_dataset("mmk", 30, 1, str(out), chunk_size=10, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == sorted([*before, storage.LOCK])
    assert sorted(p.name for p in out.iterdir()) == before, "the lock is released"

    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / storage.LOCK).write_text(
        json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "earlier", "what": "dataset"})
    )
    with caplog.at_level("WARNING", logger="mechinfer.storage"):
        simulate_dataset("mmk", 30, 1, str(out), chunk_size=10, overwrite=True)
    assert f"taking over the lock of pid {gone.pid}" in caplog.text
    assert dataset.read_table(str(out)).num_rows == 30 and not (out / storage.LOCK).exists()


def test_a_running_jobs_directory_is_left_alone(tmp_path, run_cli):
    """Through the CLI, as the issue's second `jobs/simulate.py` on the same --out: refused
    with exit 2 and the holder named, the first job's files untouched."""
    import socket

    out = tmp_path / "ds"
    out.mkdir()
    (out / "part-000000000000.parquet").write_bytes(b"being written")
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / "_lock.json").write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now", "what": "dataset"})
        )
        status, _, err = run_cli("simulate", "--model", "mmk", "--n", "10", "--seed", "2", "--out", str(out))
        assert status == 2 and f"pid {holder.pid}" in err and "in use by another dataset writer" in err, err
        assert (out / "part-000000000000.parquet").read_bytes() == b"being written"
    finally:
        holder.kill()
        holder.wait()
