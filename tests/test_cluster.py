"""cluster.yaml against Ray's own cluster-config schema, and jobs (simulate, bulk
estimation) submitted to a real `ray start --head` cluster through Ray's
JobSubmissionClient with --working-dir."""

import copy
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from processes import free_port, ray_head, submit_job

import mechinfer
from mechinfer.data import format as dataset
from mechinfer.estimate import bulk

REPO = Path(__file__).resolve().parents[1]


def _validate(config: dict) -> None:
    """What `ray up` checks before it starts anything: defaults filled in, then the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_schema_check():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types) and config["head_node_type"] == "head"
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
    assert all("min_workers" in t and "max_workers" in t for t in types.values())


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda c: c["available_node_types"]["cpu_worker"].__setitem__("min_workers", "many"), "is not of type"),
        (lambda c: c.__setitem__("head_node_type", "gpu_box"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu_worker"].__setitem__("GPUs", 1), "Additional properties"),
        (lambda c: c.__setitem__("max_workers", 1), "max_workers"),
    ],
)
def test_a_broken_copy_fails_the_check(break_it, message):
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["cpu_worker"]["min_workers"] = 2
    _validate(config)
    break_it(config)
    with pytest.raises(Exception, match=message):
        _validate(config)


def test_cluster_yaml_comes_up_locked():
    """Token authentication on every node, the token shipped to each; SSH from one range
    only; least-privilege instance profiles; no tasks on the head."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    (rule,) = config["provider"]["security_group"]["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"]) == (22, 22)
    assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"])
    types = config["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0} and "--num-cpus=0" in config["head_start_ray_commands"][-1]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in types.items()}
    assert profiles["head"].endswith("/mechinfer-head")
    assert profiles["cpu_worker"] == profiles["gpu_worker"] and profiles["cpu_worker"].endswith("/mechinfer-worker")
    worker = json.loads((REPO / "cluster" / "iam" / "worker-policy.json").read_text())
    actions = {
        a for st in worker["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    assert all(a.startswith("s3:") for a in actions), actions
    assert all(st["Resource"].startswith("arn:aws:s3:::mechinfer-data") for st in worker["Statement"])
    head = json.loads((REPO / "cluster" / "iam" / "head-policy.json").read_text())
    assert not [st for st in head["Statement"] if st["Action"] in ("*", "s3:*", "ec2:*")]


@pytest.mark.slow
@pytest.mark.cluster
def test_head_started_as_cluster_yaml_starts_it_refuses_strangers(tmp_path):
    """`ray start --head` as cluster.yaml's head command runs it (its environment and
    flags; free ports here, no autoscaler file), on a node with a fresh HOME that holds
    only the shipped token file: a job client without the token is refused."""
    import shlex

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    command = config["head_start_ray_commands"][-1].split(";")[-1]
    words = shlex.split(command)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_MODE", None)
    while "=" in words[0]:  # the command's own environment (RAY_AUTH_MODE=token)
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:3] == ["ray", "start", "--head"], command
    flags = [w for w in words[3:] if not w.startswith(("--port=", "--object-manager-port=", "--autoscaling-config="))]
    token = secrets.token_hex(32)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token)  # what file_mounts ships
    with ray_head(flags, env) as address:
        deadline = time.time() + 60
        while True:  # the dashboard's port opens before its job API answers
            try:
                assert JobSubmissionClient(address, headers={"authorization": "Bearer " + token}).list_jobs() == []
                break
            except (ConnectionError, RuntimeError):
                if time.time() > deadline:
                    raise
                time.sleep(1)
        with pytest.raises(AuthenticationError):
            JobSubmissionClient(address).list_jobs()
        with pytest.raises(AuthenticationError):
            JobSubmissionClient(address, headers={"authorization": "Bearer " + "0" * 64}).list_jobs()


@pytest.fixture(scope="module")
def head_node():
    """One `ray start --head` (token authentication on, a token of its own) for the jobs
    submitted in this module."""
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    with ray_head(["--dashboard-host=127.0.0.1", "--num-cpus=2"], env) as address:
        yield address, token


@pytest.mark.slow
@pytest.mark.cluster
def test_job_submitted_to_a_ray_start_cluster(head_node, tmp_path):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address, token = head_node
    with pytest.raises(AuthenticationError):  # token authentication stays on
        JobSubmissionClient(address, headers={"authorization": "Bearer " + "0" * 64}).list_jobs()
    out = tmp_path / "mmk-job"
    entrypoint = f"python jobs/simulate.py --model mmk --n 300 --seed 0 --chunk-size 100 --out {out}"
    status, logs = submit_job(address, token, entrypoint)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "simulated 300 mmk samples" in logs and "0 failed solves" in logs
    summary = json.loads([line for line in logs.splitlines() if line.startswith('{"')][-1])  # its summary line
    assert summary["samples"] == 300 and summary["samples_per_s"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "mmk" and manifest["n_samples"] == 300
    ids = dataset.read_table(str(out), columns=["sample_id"]).column("sample_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(300))


@pytest.mark.slow
@pytest.mark.cluster
def test_job_with_a_model_file_outside_the_repository(head_node, tmp_path):
    """--model names a Python file outside the working dir (absolute path): the driver
    reads it, the Ray Data workers rebuild the model from its source, the manifest carries it."""
    mmk = (REPO / "platform" / "mechinfer" / "models" / "mmk.py").read_text()
    text = mmk.replace("from .", "from mechinfer.models.").replace('name="mmk"', 'name="jobmm"')
    (tmp_path / "jobmm.py").write_text(text)
    address, token = head_node
    out = tmp_path / "jobmm-data"
    entrypoint = f"python jobs/simulate.py --model {tmp_path / 'jobmm.py'} --n 100 --seed 0 --chunk-size 50 --out {out}"
    status, logs = submit_job(address, token, entrypoint)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "simulated 100 jobmm samples" in logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "jobmm" and manifest["model_source"]["files"] == {"jobmm.py": text}
    assert manifest["model_hash"] == mechinfer.load_model(tmp_path / "jobmm.py").source_hash


@pytest.mark.slow
@pytest.mark.cluster
def test_bulk_estimate_job_submitted_to_a_ray_start_cluster(head_node, tmp_path):
    """The E. coli example table (it travels in the working dir), 3 bad experiments."""
    address, token = head_node
    out = tmp_path / "submitted"
    entrypoint = (
        f"{sys.executable} jobs/estimate.py --model ecoli --input examples/ecoli_experiments.csv "
        f"--output {out} --chunk-size 8"
    )
    status, logs = submit_job(address, token, entrypoint)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "estimated 17 of 20 ecoli experiments" in logs
    rows = bulk.read_estimates(str(out)).to_pandas()
    assert sorted(rows.experiment) == [f"run-{i:02d}" for i in range(1, 21)]
    names = list(mechinfer.get_model("ecoli").parameter_names)
    assert rows.error.notna().sum() == 3 and rows.loc[rows.error.isna(), names].notna().all().all()


@pytest.mark.slow
def test_pipeline_refuses_a_cluster_address_that_does_not_answer(tmp_path):
    port = free_port()
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "pipeline.py"),
            "--model",
            "mmk",
            "--run",
            str(tmp_path / "run"),
            "--address",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 2 and f"the Ray cluster at 127.0.0.1:{port} does not answer" in run.stderr
    assert "Traceback" not in run.stderr
