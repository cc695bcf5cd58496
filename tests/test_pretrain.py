"""jobs/pretrain.py, the recipe of the shipped checkpoints: the command a shipped
checkpoint's training summary records, run at a tiny size, gives a summary of the same
make-up, the shipped R2 of the true parameters (the SPEC test set's, whatever the size)
and the numbers this size gives: training on CPU is deterministic (one worker, the same
rows in the same order, seeded initialisation and subsets); the shipped checkpoint is
left as it is (--no-install). The fine-tuned checkpoint it writes loads as an estimator
and answers (the test of the three Ray Train stages run in turn)."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

import mechinfer
from mechinfer import cli

TINY = ["--n", "400", "--proxy-epochs", "1", "--epochs", "1", "--finetune-steps", "2"]
TINY += ["--batch-size", "64", "--width", "16", "--depth", "1", "--recalibration-samples", "32"]
# what this size gave, the same to the last bit in two runs (steps, validation loss)
RECORDED = {"proxy": (6, 21.1044921875), "inference": (6, 10.903571128845215), "finetune": (2, 10.391467864181983)}
RECORDED_R2 = {"through the proxy": 0.051138062851974087, "fine-tuned through the solver": 0.051376837822435406}


def _stages(summary: dict) -> list[dict]:
    return [summary["proxy"], *summary["stages"]]


def test_pretrain_reproduces_a_shipped_summary_at_a_tiny_size(ray_local, tmp_path):
    shipped = Path(mechinfer.__file__).parent / "pretrained" / "mmk"
    before = {str(p): p.stat().st_mtime_ns for p in shipped.rglob("*")}
    recorded = json.loads((shipped / "training_summary.json").read_text())
    command = shlex.split(recorded["command"])
    assert command[:2] == ["python", "jobs/pretrain.py"], recorded["command"]
    args = [*command[2:], *TINY, "--work", str(tmp_path), "--no-install"]  # the last of a flag wins
    assert cli.main(["pretrain", *args], prog="python jobs/pretrain.py") == 0

    out = tmp_path / "inference"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary.keys() == recorded.keys() and summary["model"] == "mmk"
    assert [s["stage"] for s in _stages(summary)] == [s["stage"] for s in _stages(recorded)]
    assert summary["r2_true_parameters"]["value"] == pytest.approx(recorded["r2_true_parameters"]["value"], rel=1e-12)
    for stage in _stages(summary):
        steps, val_loss = RECORDED[stage["stage"]]
        assert (stage["steps"], stage["num_workers"]) == (steps, 1)
        assert stage["val_loss"] == pytest.approx(val_loss, rel=1e-4), stage
    for label, r2 in RECORDED_R2.items():
        assert summary[f"r2_network ({label})"]["100%"]["value"] == pytest.approx(r2, rel=1e-4)
    assert (out / "training_summary.txt").read_text().startswith(f"$ python jobs/pretrain.py {shlex.join(args)}\n")
    assert (out / "through-proxy" / "weights.pt").exists()
    meta = json.loads((out / "checkpoint.json").read_text())
    assert (meta["model"], meta["training"]["stage"]) == ("mmk", "finetune")
    assert meta["dataset"]["n_samples"] == 400
    est = mechinfer.load_estimator(str(out))
    t = np.sort(np.random.default_rng(0).uniform(0, 2, (5, 14)), axis=1)
    theta = est.estimate(t, np.zeros((5, 14), int), np.full((5, 14), 5.0))
    assert theta.shape == (5, 4) and np.isfinite(theta).all()
    assert {str(p): p.stat().st_mtime_ns for p in shipped.rglob("*")} == before
