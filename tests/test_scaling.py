"""--device auto|cpu|gpu: the Ray Train scaling request each choice builds, from the
cluster's resources now and the GPUs its autoscaler's node types can provide (no Ray)."""

import json
from pathlib import Path

import pytest
import yaml
from ray.train import ScalingConfig

from mechinfer.learn.devices import GPUsUnavailable, config_gpus, node_type_gpus, scaling_for

REPO = Path(__file__).resolve().parents[1]
# a `ray up cluster.yaml` cluster as training finds it: the head (CPU 0), no worker yet
UP_CLUSTER: dict = {"memory": 1e10, "object_store_memory": 1e9}
LAPTOP = {"CPU": 2.0}


def _request(kwargs: dict) -> dict:
    """What Ray Train asks of the cluster for each worker."""
    config = ScalingConfig(**kwargs)
    return {"workers": config.num_workers, "use_gpu": config.use_gpu, **config._resources_per_worker_not_none}


def test_cluster_yaml_node_types_provide_gpus():
    assert config_gpus(yaml.safe_load((REPO / "cluster.yaml").read_text())) == 2  # gpu_worker: GPU 1, max_workers 2


def test_gpu_asks_for_gpus_the_cluster_does_not_have_yet():
    assert _request(scaling_for("gpu", 2, UP_CLUSTER, None)) == {"workers": 2, "use_gpu": True, "CPU": 0.25, "GPU": 1}
    assert _request(scaling_for("gpu", 2, UP_CLUSTER, 2))["use_gpu"]
    with pytest.raises(
        GPUsUnavailable, match="asked for 2 GPU workers; the cluster's node types provide at most 1 GPU"
    ):
        scaling_for("gpu", 2, UP_CLUSTER, 1)


def test_auto_follows_the_node_types_not_the_gpus_present():
    assert _request(scaling_for("auto", 2, UP_CLUSTER, 2)) == {"workers": 2, "use_gpu": True, "CPU": 0.25, "GPU": 1}
    assert not _request(scaling_for("auto", 3, UP_CLUSTER, 2))["use_gpu"]  # 3 workers, 2 GPUs at most
    assert _request(scaling_for("auto", 1, LAPTOP, None)) == {"workers": 1, "use_gpu": False, "CPU": 1.0}
    assert not scaling_for("auto", 2, {**LAPTOP, "GPU": 1.0}, None)["use_gpu"]  # fewer GPUs than workers
    assert scaling_for("auto", 2, {"CPU": 16.0, "GPU": 2.0}, None)["use_gpu"]


def test_cpu_never_asks_for_gpus():
    assert _request(scaling_for("cpu", 2, {"CPU": 16.0, "GPU": 8.0}, 8)) == {"workers": 2, "use_gpu": False, "CPU": 1.0}
    assert scaling_for("cpu", 2, LAPTOP, None)["resources_per_worker"] == {"CPU": 0.5}  # a CPU left for Ray Data
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        scaling_for("tpu", 1, LAPTOP, None)


def test_node_types_are_read_from_the_launchers_config(tmp_path, monkeypatch):
    """Without a cluster config reported to Ray, the file the launcher's autoscaler runs
    with (JSON, resources filled in per instance type), or None where there is none."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["cpu_worker"]["resources"] = {"CPU": 32}
    (tmp_path / "bootstrap.yaml").write_text(json.dumps(config))
    monkeypatch.setenv("MECHINFER_AUTOSCALING_CONFIG", str(tmp_path / "bootstrap.yaml"))
    assert node_type_gpus() == 2
    monkeypatch.setenv("MECHINFER_AUTOSCALING_CONFIG", str(tmp_path / "none.yaml"))
    assert node_type_gpus() is None
