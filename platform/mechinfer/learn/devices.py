"""Where Ray Train's workers run (``--device auto|cpu|gpu``) and the request that puts them there.

A cluster started by ``ray up cluster.yaml`` has no GPU at the moment training starts:
its ``gpu_worker`` nodes (``min_workers: 0``) start only when something asks for GPUs.
So the choice follows what the cluster *can* provide, not what it has at one moment:
``gpu`` asks for one GPU per worker (the autoscaler starts GPU nodes for the request) and
waits for them, with a timeout and a message that says what to check; ``auto`` asks for
GPUs when the GPUs present or the autoscaler's node types provide one per worker, and
for CPUs otherwise; ``cpu`` never asks for GPUs.
"""

from __future__ import annotations

import logging
import os
import time

from ..config import DEVICES

log = logging.getLogger(__name__)

# where the cluster launcher leaves the autoscaler's config on a `ray up` head node (job
# drivers run there); MECHINFER_AUTOSCALING_CONFIG names another file
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


class GPUsUnavailable(ValueError):
    """GPU workers were asked for and the cluster cannot provide them."""


def scaling_for(device: str, num_workers: int, cluster_resources: dict, node_type_gpus: int | None) -> dict:
    """The ``ScalingConfig`` keyword arguments of ``num_workers`` Ray Train workers.

    ``cluster_resources`` is what the cluster has now (``ray.cluster_resources()``);
    ``node_type_gpus`` the most GPUs the autoscaler's node types can provide, or None
    where no autoscaler config is known (a local Ray). ``gpu`` is refused at once when
    the node types are known to provide fewer GPUs than workers."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; one of {', '.join(DEVICES)}")
    present = cluster_resources.get("GPU", 0)
    possible = max(present, node_type_gpus or 0)
    if device == "gpu" and node_type_gpus is not None and possible < num_workers:
        raise GPUsUnavailable(
            f"asked for {_workers(num_workers)}; the cluster's node types provide at most {possible:g} GPUs: "
            "check the gpu_worker node type in cluster.yaml or use --device cpu"
        )
    use_gpu = device == "gpu" or (device == "auto" and possible >= num_workers)
    # Leave a CPU for Ray Data's readers: 2 workers on a 2-CPU machine would otherwise
    # hold every CPU and the dataset shards they wait on could never be read.
    cpus = max(0.25, min(1.0, (cluster_resources.get("CPU", 1) - 1) / num_workers))
    return {
        "num_workers": num_workers,
        "use_gpu": use_gpu,
        "resources_per_worker": {"CPU": cpus, "GPU": 1} if use_gpu else {"CPU": cpus},
    }


def _workers(n: int) -> str:
    return f"{n} GPU worker" + ("s" if n != 1 else "")


def config_gpus(config: dict) -> int:
    """The GPUs of a cluster-launcher config's node types, each at its ``max_workers``
    (the head node's type once more): what its autoscaler can provide at most."""
    head = config.get("head_node_type")
    total = 0.0
    for name, node_type in (config.get("available_node_types") or {}).items():
        gpus = float((node_type.get("resources") or {}).get("GPU", 0))
        total += gpus * (int(node_type.get("max_workers", 0)) + (name == head))
    return int(total)


def node_type_gpus() -> int | None:
    """The most GPUs this cluster's autoscaler can provide: from the cluster config the
    autoscaler reported to Ray (KubeRay, autoscaler v2; what Ray Train itself checks), or
    else from the config file the cluster launcher's autoscaler runs with
    (``~/ray_bootstrap_config.yaml`` on a ``ray up`` head node, where the launcher has
    filled in each instance type's GPUs); None where neither exists."""
    try:
        from ray._private.state import state

        reported = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: its absence only means "not known"
        reported = None
    if reported:
        return int(reported.get("GPU", 0))
    path = os.path.expanduser(os.environ.get("MECHINFER_AUTOSCALING_CONFIG", BOOTSTRAP_CONFIG))
    if not os.path.isfile(path):
        return None
    import yaml  # the launcher writes JSON, which YAML reads too

    with open(path) as f:
        return config_gpus(yaml.safe_load(f) or {})


def wait_for_gpus(num_workers: int, timeout_s: float, poll_s: float = 2.0) -> dict:
    """Ask the autoscaler for one GPU per worker and wait until the cluster has as many
    GPUs; returns the cluster's resources then. The request is withdrawn when the wait
    ends (Ray Train's placement group holds the GPUs from there, and idle GPU nodes may
    stop after training); after ``timeout_s`` without them, :class:`GPUsUnavailable`."""
    import ray
    from ray.autoscaler.sdk import request_resources

    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= num_workers:
        return resources
    have = resources.get("GPU", 0)
    log.info("asking the cluster for %d GPU(s) (it has %g); waiting up to %g s", num_workers, have, timeout_s)
    deadline = time.monotonic() + timeout_s
    request_resources(bundles=[{"GPU": 1}] * num_workers)
    try:
        while resources.get("GPU", 0) < num_workers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GPUsUnavailable(
                    f"asked for {_workers(num_workers)}; the cluster has {resources.get('GPU', 0):g} GPUs after "
                    f"waiting {timeout_s:g} s: check the gpu_worker node type in cluster.yaml or use --device cpu"
                )
            time.sleep(min(poll_s, left))
            resources = ray.cluster_resources()
    finally:
        request_resources(bundles=[])
    log.info("the cluster has %g GPU(s)", resources["GPU"])
    return resources
