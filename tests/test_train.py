"""Ray Train stages on a small dataset: they run, checkpoint, load, and refuse bad input."""
import json

import numpy as np
import pytest

import mechinfer
from mechinfer.generate import simulate_dataset
from mechinfer.train import train


@pytest.fixture(scope="module")
def mmk_data(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    simulate_dataset("mmk", 600, 0, str(root / "mmk"), chunk_size=300)
    return root


def test_stages_run_and_the_estimator_loads(mmk_data):
    data = str(mmk_data / "mmk")
    proxy = train("proxy", "mmk", data, str(mmk_data / "proxy"), epochs=2, batch_size=64, max_steps_per_epoch=5)
    assert proxy.steps == 10 and np.isfinite(proxy.val_loss)
    inf = train("inference", "mmk", data, str(mmk_data / "inf"), epochs=1, batch_size=64,
                max_steps_per_epoch=5, proxy_checkpoint=str(mmk_data / "proxy"))
    ft = train("finetune", "mmk", data, str(mmk_data / "ft"), epochs=1, batch_size=64,
               max_steps_per_epoch=2, init_checkpoint=str(mmk_data / "inf"), lr=1e-4)
    assert inf.steps == 5 and ft.steps == 2
    meta = json.loads((mmk_data / "ft" / "checkpoint.json").read_text())
    assert meta["model"] == "mmk" and meta["dataset"]["n_samples"] == 600 and meta["training"]["stage"] == "finetune"
    est = mechinfer.load_estimator(str(mmk_data / "ft"))
    m = mechinfer.get_model("mmk")
    t = np.sort(np.random.default_rng(0).uniform(0, 2, (5, 14)), axis=1)
    theta = est.estimate(t, np.zeros((5, 14), int), np.full((5, 14), 5.0))
    assert theta.shape == (5, m.n_parameters) and np.isfinite(theta).all()


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
    failed = tmp_path / "failed"
    simulate_dataset("mmk", 30, 0, str(failed), chunk_size=30, solver_options={"max_steps": 1})
    with pytest.raises(ValueError, match="0 usable samples"):
        train("proxy", "mmk", str(failed), str(tmp_path / "x"))


def test_nan_loss_stops_without_a_checkpoint(mmk_data, tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 0, step \d+; no checkpoint saved"):
        train("proxy", "mmk", str(mmk_data / "mmk"), str(tmp_path / "nan"), epochs=1, batch_size=64, lr=1e30,
              max_steps_per_epoch=8)
    assert not (tmp_path / "nan" / "checkpoint.json").exists()
