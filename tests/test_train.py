"""Ray Train stages on a small dataset: they run, checkpoint, load, and refuse bad input."""

import json
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from processes import pids_of

import mechinfer
from mechinfer.data.format import read_table
from mechinfer.data.generate import simulate_dataset
from mechinfer.learn import checkpoint, networks
from mechinfer.learn.devices import GPUsUnavailable
from mechinfer.learn.losses import batch_tensors, proxy_loss
from mechinfer.learn.trainer import Phase, train, train_phases

pytestmark = pytest.mark.slow


# the proxy that later stages build on, trained on 1 worker; the DDP test trains the
# same on 2 workers and compares (each Ray Train run costs ~20 s of start-up here)
PROXY_SETTINGS = dict(epochs=2, batch_size=64, max_steps_per_epoch=6, seed=1)


@pytest.fixture(scope="module")
def mmk_data(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    simulate_dataset("mmk", 600, 0, str(root / "mmk"), chunk_size=300)
    return root


@pytest.fixture(scope="module")
def proxy(mmk_data):
    summary = train("proxy", "mmk", str(mmk_data / "mmk"), str(mmk_data / "proxy"), **PROXY_SETTINGS)
    assert summary.steps == 12 and summary.num_workers == 1 and np.isfinite(summary.val_loss)
    return mmk_data / "proxy"


def test_bad_inputs(mmk_data, tmp_path):
    data = str(mmk_data / "mmk")
    with pytest.raises(ValueError, match="holds 'mmk' samples, not 'ecoli'"):
        train("proxy", "ecoli", data, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="has no manifest.json"):
        train("proxy", "mmk", str(tmp_path), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="needs proxy_checkpoint"):
        train("inference", "mmk", data, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown stage"):
        train("pretrain", "mmk", data, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="needs init_checkpoint"):
        train("finetune", "mmk", data, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="train two kinds of network"):
        train_phases(
            [Phase("proxy", str(tmp_path / "p"), 1, 1e-3), Phase("finetune", str(tmp_path / "f"), 1, 1e-4)], "mmk", data
        )
    import shutil

    old = tmp_path / "old-spec"
    shutil.copytree(mmk_data / "mmk", old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "spec_version": 0}))
    with pytest.raises(ValueError, match="written for spec version 0"):
        train("proxy", "mmk", str(old), str(tmp_path / "x"))
    failed = tmp_path / "failed"
    simulate_dataset("mmk", 30, 0, str(failed), chunk_size=30, solver_options={"max_steps": 1})
    with pytest.raises(ValueError, match="0 usable samples"):
        train("proxy", "mmk", str(failed), str(tmp_path / "x"))


def test_gpu_workers_that_never_come_are_a_clear_error(mmk_data, tmp_path):
    """--device gpu on a cluster without GPUs (the local Ray: 2 CPUs) asks for them,
    waits, then says so in one line, before any training starts."""
    start = time.perf_counter()
    message = (
        "asked for 1 GPU worker; the cluster has 0 GPUs after waiting 1 s: "
        "check the gpu_worker node type in cluster.yaml or use --device cpu"
    )
    with pytest.raises(GPUsUnavailable, match=f"^{message}$"):
        train("proxy", "mmk", str(mmk_data / "mmk"), str(tmp_path / "x"), device="gpu", gpu_timeout_s=1)
    assert 1 <= time.perf_counter() - start < 15
    assert not (tmp_path / "x").exists()


def test_nan_loss_stops_without_a_checkpoint(mmk_data, tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 0, step \d+; no checkpoint saved"):
        train(
            "proxy",
            "mmk",
            str(mmk_data / "mmk"),
            str(tmp_path / "nan"),
            epochs=1,
            batch_size=64,
            lr=1e30,
            max_steps_per_epoch=8,
        )
    assert not (tmp_path / "nan" / "checkpoint.json").exists()


def test_tune_writes_best_config_and_trials(mmk_data, proxy, tmp_path):
    from mechinfer.learn.tuner import BEST_CONFIG, tune_inference

    summary = tune_inference(
        "mmk",
        str(mmk_data / "mmk"),
        str(proxy),
        str(tmp_path / "tune"),
        num_samples=3,
        max_steps=40,
        steps_per_report=10,
        max_rows=400,
    )
    best = json.loads((tmp_path / "tune" / BEST_CONFIG).read_text())
    assert best == summary["best"] and best["model"] == "mmk" and np.isfinite(best["val_nll"])
    assert set(best) >= {"width", "depth", "pooling", "time_encoding", "channel_encoding", "lr", "batch_size"}
    trials = (tmp_path / "tune" / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 3 and trials[0].startswith("val_nll")
    # the best config is the trial with the lowest validation NLL
    import csv

    rows = list(csv.DictReader(trials))
    lowest = min(rows, key=lambda r: float(r["val_nll"]))
    assert np.isclose(best["val_nll"], float(lowest["val_nll"]), rtol=1e-6)
    assert all(str(best[k]) == lowest[f"config/{k}"] for k in ("width", "depth", "pooling", "batch_size")), (
        best,
        lowest,
    )
    with pytest.raises(ValueError, match="holds 'mmk' samples, not 'ecoli'"):
        tune_inference("ecoli", str(mmk_data / "mmk"), str(proxy), str(tmp_path / "t2"))


def test_two_workers_ddp_match_one(mmk_data, proxy, tmp_path):
    """DDP on 2 CPU workers: same global batch and steps as the 1-worker proxy, and as
    much progress on the same validation rows."""
    two = train("proxy", "mmk", str(mmk_data / "mmk"), str(tmp_path / "w2"), num_workers=2, **PROXY_SETTINGS)
    assert two.steps == 12 and two.num_workers == 2 and np.isfinite(two.val_loss)
    # Each run reports the validation loss of its rank 0's shard (all 30 validation rows
    # with 1 worker, about half of them with 2), so compare both networks on the same rows.
    m = mechinfer.get_model("mmk")
    table = read_table(str(mmk_data / "mmk"))
    val = batch_tensors(table.filter(pa.array(table["sample_id"].to_numpy() % 20 == 0)))
    paths = {1: str(proxy), 2: str(tmp_path / "w2")}
    with torch.no_grad():
        losses = {w: float(proxy_loss(m, checkpoint.load(p)[0], val)) for w, p in paths.items()}
        untrained = float(proxy_loss(m, networks.build(checkpoint.load(paths[1])[1]["network"]), val))
    assert len(val["z"]) == 30
    assert losses[1] < untrained and losses[2] < untrained, (losses, untrained)
    # DDP's promises: the two workers end with the same weights, having trained on
    # disjoint shards of the data (each about half of the rows the 1-worker run saw)
    workers = json.loads((tmp_path / "w2" / "checkpoint.json").read_text())["metrics"]
    assert workers["workers_max_weight_diff"] == 0.0, workers
    assert workers["shard_overlap"] == 0 and len(workers["shard_rows"]) == 2, workers
    assert min(workers["shard_rows"]) > 0, workers
    # as much progress from the untrained loss (measured: 1 worker 22.6 -> 10.2 and
    # 2 workers -> 10.8 in 18 steps)
    assert abs(losses[2] - losses[1]) < 0.3 * (untrained - losses[1]), (losses, untrained)


def _train_worker_pids():
    return pids_of(b"ray::RayTrainWorker")


def test_killed_train_worker_resumes_from_checkpoint(mmk_data, tmp_path):
    """A worker killed after the first checkpoint of a two-phase run (the way
    train-inference runs through the proxy, then fine-tunes): the run resumes from the
    checkpoint, finishes the first phase, then starts the second afresh (its own
    optimizer and step count), and each phase's last weights reach its own checkpoint."""
    import os
    import signal
    import threading
    import time

    storage = tmp_path / "results"
    result = {}
    phases = [
        Phase("proxy", str(tmp_path / "ck"), epochs=3, lr=1e-3, max_steps_per_epoch=25),
        Phase("proxy", str(tmp_path / "ck2"), epochs=1, lr=5e-4, max_steps_per_epoch=25),
    ]
    job = threading.Thread(
        target=lambda: result.update(
            summaries=train_phases(phases, "mmk", str(mmk_data / "mmk"), batch_size=16, storage_path=str(storage))
        )
    )
    job.start()
    killed = None
    deadline = time.time() + 180
    while killed is None and job.is_alive() and time.time() < deadline:
        # after Ray Train has registered the first checkpoint (its manager's snapshot is
        # written then): a kill between the checkpoint's upload and its registration
        # restarts from scratch, which a resume test must not count as a resume
        if list(storage.glob("*/checkpoint_manager_snapshot.json")) and _train_worker_pids():
            killed = _train_worker_pids()[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    job.join(timeout=300)
    assert killed is not None, "a training worker was killed after the first checkpoint"
    first, second = result["summaries"]
    assert first.steps == 75, "resumed from the checkpoint: no epoch lost or repeated in the step count"
    metrics = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())["metrics"]
    assert metrics["epoch"] == 2
    # what only a resumed run shows: it continued from a later epoch, took fewer steps
    # than the whole run, and its optimizer carries the steps taken before the kill
    assert metrics["resumed_from_epoch"] >= 1, metrics
    assert metrics["attempt_steps"] < 75 and metrics["optimizer_steps"] == 75, metrics
    # the second phase: its own optimizer from its first step, its own checkpoint and lr
    assert second.steps == 25 and second.checkpoint == str(tmp_path / "ck2")
    later = json.loads((tmp_path / "ck2" / "checkpoint.json").read_text())
    assert later["metrics"]["optimizer_steps"] == 25 and later["metrics"]["epoch"] == 0, later["metrics"]
    assert later["training"]["lr"] == 5e-4 and later["training"]["stage"] == "proxy"
    weights = [torch.load(tmp_path / d / "weights.pt", weights_only=True) for d in ("ck", "ck2")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "the second phase trained on"
