"""Ray Train for the proxy and the inference network (SPEC 6, stages 2-3).

One loop serves the four stages: ``proxy`` (fit the proxy to the noise-free outputs),
``warmup`` (the Deep Set regressing the simulated draws' z), ``inference`` (the Deep Set,
minimising the NLL through the frozen proxy) and ``finetune`` (the Deep Set again,
through the differentiable mechanistic solver).

Why the warm-up: with a PEtab problem's wide priors the NLL through the proxy alone
teaches the network nothing. Measured on the five benchmark problems at the small
preset, the fine-tuned networks scored R2 -0.89 to 0.10 on the SPEC test set (Boehm
-0.07: the prior's median for every data set). Two reasons: from a random start every
estimate sits where no parameter moves the predictions, and a draw's noise scale (an
estimated sigma, drawn over decades) is often far below the proxy's error, so through
the proxy the lowest NLL explains the data as noise. Regressing z first (the z of every
draw is known) gives R2 0.36-0.84 on four of the five in seconds. The training through
the proxy then goes on from there and keeps its result only where it raises R2 on the
validation split (:func:`keep_the_better`, :data:`SELECTION_ROWS` rows); else the
warm-up's network goes on to the fine-tuning. The
dataset streams from Parquet through Ray Data shards; every epoch ends with a checkpoint,
and a worker failure resumes from the last one (``FailureConfig``). The workers run on
GPUs or CPUs (``device``: :mod:`.devices`), with the same code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import storage
from ..arrays import positive_int
from ..config import FinetuneConfig, TrainConfig
from ..data import format as ds_format
from ..data.samples import TEST_SEED, spec_test_set
from ..models import likelihood, load_model
from ..models.base import Model
from ..models.likelihood import r2
from ..models.sources import check_model, model_from_record, source_record
from ..runtime import ensure_ray
from ..solver import SolveStatus
from . import checkpoint, devices, losses, networks

STAGES = ("proxy", "warmup", "inference", "finetune")
# validation rows on which the training through the proxy must beat the warm-up (R2 through the solver)
SELECTION_ROWS = 256
VALIDATION_EVERY = 20  # sample_id % 20 == 0 is the validation split (never the SPEC test set)


@dataclass
class TrainSummary:
    stage: str
    model: str
    checkpoint: str
    epochs: int
    steps: int
    samples_per_s: float
    wall_s: float
    val_loss: float
    num_workers: int
    device: str
    excluded_rows: int  # dataset rows whose solve failed (status != 0), never trained on

    def __str__(self) -> str:
        return (
            f"{self.stage} ({self.model}): {self.epochs} epochs, {self.steps} steps, {self.num_workers} worker(s) "
            f"on {self.device}, {self.samples_per_s:.0f} samples/s, {self.wall_s:.1f} s; "
            f"validation loss {self.val_loss:.4f}; {self.excluded_rows} failed-solve rows excluded; "
            f"checkpoint {self.checkpoint}"
        )


def _split(ds, validation: bool):
    """The validation rows (sample_id % 20 == 0) or the training rows of a dataset."""

    def keep(table):
        is_val = np.asarray(table["sample_id"]) % VALIDATION_EVERY == 0
        return table.filter(pa.array(is_val if validation else ~is_val))

    return ds.map_batches(keep, batch_format="pyarrow")


def value_stats(table, model: Model | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the observed values (input scaling).
    For a model with an observation model of its own (values in its noise space), the
    median and the median absolute deviation (as a normal sd) instead, per channel of the
    model: a noise scale drawn from a wide prior (a PEtab problem's, 1e-5 to 1e5) puts a
    few values orders of magnitude away, which would set a standard deviation alone."""
    b = losses.batch_tensors(table, model)
    if model is None or model.observation is None:
        offsets, scales = [], []
        for c in range(int(b["channel"].max()) + 1):
            v = b["value"][b["channel"] == c]
            offsets.append(float(v.mean()))
            scales.append(float(v.std().clamp(min=1e-3)))
        return offsets, scales
    values, channels = b["value"].double().numpy(), b["channel"].numpy()
    offsets, scales = [], []
    for c in range(len(model.channels)):
        v = values[(channels == c) & np.isfinite(values)]
        if not len(v):
            offsets.append(0.0)
            scales.append(float(model.sigma[c]))
            continue
        median = float(np.median(v))
        mad = 1.4826 * float(np.median(np.abs(v - median)))
        offsets.append(median)
        scales.append(max(mad, 1e-3 * max(abs(median), 1.0), 1e-6))
    return offsets, scales


FINISHED = "finished"  # in a run's checkpoints: finished/<k>/, the last weights of each phase k finished
PHASE_FILE = "phase.json"  # beside a finished phase's checkpoint: its seconds of training


def _loop(cfg: dict) -> None:
    """One Ray Train run: its phases in turn (``cfg["phases"]``: stage, epochs, lr and
    steps per epoch each), the network carried from one to the next; a phase starts as
    a run of its own would (its subsets' generator seeded, a new optimizer, its step
    count from 0; nothing else in training draws random numbers). Every epoch
    ends with a checkpoint that also holds, under ``finished/<k>/``, the last weights of
    each phase k finished so far, so a resumed run and the driver find them all. Why one
    run for several phases: each Ray Train run costs ~15 s of start-up on a small machine
    (its controller, worker group and dataset executors), as much as a tiny stage's
    training."""
    import ray.train
    import ray.train.torch

    torch.manual_seed(cfg["seed"] + ray.train.get_context().get_world_rank())
    m = model_from_record(cfg["model"])  # from its stored source: a user's file need not exist here
    device = ray.train.torch.get_device()
    phases = cfg["phases"]
    net = networks.build(cfg["network"])
    if cfg.get("init_checkpoint"):
        net.load_state_dict(checkpoint.load(cfg["init_checkpoint"], model=m, kind="inference")[0].state_dict())
    proxy = None
    if any(phase["stage"] == "inference" for phase in phases):
        proxy = checkpoint.load(cfg["proxy_checkpoint"], model=m, kind="proxy")[0].to(device)
        proxy.requires_grad_(False)
    run = _Run(cfg=cfg, model=m, device=device, proxy=proxy, world=ray.train.get_context().get_world_size())
    optimizer_state = None
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            net.load_state_dict(torch.load(os.path.join(d, checkpoint.WEIGHTS), weights_only=True))
            optimizer_state = torch.load(os.path.join(d, "optimizer.pt"), weights_only=True)
            with open(os.path.join(d, "progress.json")) as f:
                state = json.load(f)
            run.epoch, run.steps = state["epoch"] + 1, state["steps"]
            for k in range(len(phases)):
                done = os.path.join(d, FINISHED, str(k))
                if os.path.exists(done):
                    done_net, meta = checkpoint.load(done, model=m)
                    with open(os.path.join(done, PHASE_FILE)) as f:
                        seconds = json.load(f)["seconds"]
                    run.finished[k] = (done_net.state_dict(), meta["metrics"], meta["training"], seconds)
    run.net = ray.train.torch.prepare_model(net)
    resumed_from = run.epoch
    first = 0
    for k, phase in enumerate(phases):
        end = first + phase["epochs"]
        if run.epoch < end:
            if run.epoch == first:  # the phase starts afresh (its subsets' generator too: _train_phase)
                run.steps, optimizer_state = 0, None
            opt = torch.optim.Adam(run.net.parameters(), lr=phase["lr"])
            if optimizer_state is not None:
                opt.load_state_dict(optimizer_state)
            if not _train_phase(run, k, first, opt, resumed_from=max(resumed_from - first, 0)):
                return
        first = end


@dataclass
class _Run:
    """What the phases of one Ray Train run share in a worker: the run's epoch (counted
    across its phases) and step count in the current phase, and the finished phases
    (k -> their last weights, metrics, training facts and seconds)."""

    cfg: dict
    model: Model
    device: Any
    proxy: Any
    world: int
    net: Any = None
    epoch: int = 0
    steps: int = 0
    finished: dict = dataclasses.field(default_factory=dict)


def _train_phase(run: _Run, k: int, first: int, opt, resumed_from: int) -> bool:
    """Phase k's epochs from the run's current one (the phase began at the run's epoch
    ``first``), each ending with a checkpoint; False where training stopped on a
    non-finite loss (the message reported)."""
    import ray.train

    cfg, m, net, world = run.cfg, run.model, run.net, run.world
    phase = cfg["phases"][k]
    stage = phase["stage"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    resumed_steps, began = run.steps, time.perf_counter()

    def loss_of(batch, subsets: bool):
        batch = {name: v.to(run.device) for name, v in batch.items()}
        if stage == "proxy":
            return losses.proxy_loss(m, net, batch)
        if stage == "warmup":
            return losses.warmup_loss(net, batch, min_obs=cfg["min_obs"] if subsets else None, generator=gen)
        through = "proxy" if stage == "inference" else "model"
        return losses.inference_loss(
            m, net, batch, through=through, proxy=run.proxy, min_obs=cfg["min_obs"] if subsets else None, generator=gen
        )

    for epoch in range(run.epoch - first, phase["epochs"]):
        start, seen, epoch_steps = time.perf_counter(), 0, 0
        seen_ids: list[np.ndarray] = []
        net.train()
        # batch_size is the global batch: with W workers each takes batch_size / W rows a
        # step, so one worker and several take the same steps over the same data.
        for table in ray.train.get_dataset_shard("train").iter_batches(
            batch_size=max(1, cfg["batch_size"] // world), batch_format="pyarrow"
        ):
            batch = losses.batch_tensors(table, m)
            if not len(batch["z"]):
                continue
            loss = loss_of(batch, subsets=True)
            check = loss.detach().clone()
            if world > 1:
                torch.distributed.all_reduce(check)
            if not torch.isfinite(check):
                _report_error(f"non-finite loss at epoch {epoch}, step {run.steps}; no checkpoint saved", stage)
                return False
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.steps += 1
            epoch_steps += 1
            seen += len(batch["z"])
            seen_ids.append(np.asarray(table["sample_id"]))
            if phase.get("max_steps_per_epoch") and epoch_steps >= phase["max_steps_per_epoch"]:
                break
        net.eval()
        chosen = {}
        after_warmup = k > 0 and cfg["phases"][k - 1]["stage"] == "warmup" and k - 1 in run.finished
        if stage == "inference" and epoch == phase["epochs"] - 1 and after_warmup:
            chosen = keep_the_better(m, net, run.finished[k - 1][0], _selection_rows())
        total, count = 0.0, 0
        with torch.no_grad():
            for table in ray.train.get_dataset_shard("val").iter_batches(batch_size=1024, batch_format="pyarrow"):
                batch = losses.batch_tensors(table, m)
                if len(batch["z"]):
                    total += float(loss_of(batch, subsets=False).detach()) * len(batch["z"])
                    count += len(batch["z"])
        adam: dict = next(iter(opt.state.values()), {})
        workers = _workers_agree(net, seen_ids, world)
        metrics = {
            "epoch": epoch,
            "steps": run.steps,
            "val_loss": total / max(count, 1),
            "samples_per_s": seen * world / max(time.perf_counter() - start, 1e-9),
            # what shows a resumed run: the epoch it continued from (0: a fresh start), the
            # steps this attempt took, and the optimizer's own step count (restored with it)
            "resumed_from_epoch": resumed_from,
            "attempt_steps": run.steps - resumed_steps,
            "optimizer_steps": int(adam["step"]) if "step" in adam else 0,
            **workers,
            **chosen,
        }
        training = {key: phase[key] for key in ("stage", "lr", "epochs")}
        training.update(batch_size=cfg["batch_size"], min_obs=cfg["min_obs"])
        if epoch == phase["epochs"] - 1:  # the phase's last weights, for the driver and later checkpoints
            weights = {name: v.detach().cpu().clone() for name, v in getattr(net, "module", net).state_dict().items()}
            run.finished[k] = (weights, metrics, training, time.perf_counter() - began)
        if ray.train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                checkpoint.save(
                    d,
                    net,
                    model=m,
                    dataset_manifest=cfg["manifest"],
                    metrics=metrics,
                    training=training,
                    extra_files={"optimizer.pt": opt.state_dict()},
                )
                for j, (weights, done_metrics, done_training, seconds) in run.finished.items():
                    done = networks.build(cfg["network"])
                    done.load_state_dict(weights)
                    where = os.path.join(d, FINISHED, str(j))
                    checkpoint.save(
                        where,
                        done,
                        model=m,
                        dataset_manifest=cfg["manifest"],
                        metrics=done_metrics,
                        training=done_training,
                    )
                    with open(os.path.join(where, PHASE_FILE), "w") as f:
                        json.dump({"seconds": seconds}, f)
                with open(os.path.join(d, "progress.json"), "w") as f:
                    json.dump({"epoch": first + epoch, "steps": run.steps}, f)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        run.epoch = first + epoch + 1
    return True


def _selection_rows() -> dict[str, np.ndarray]:
    """The first :data:`SELECTION_ROWS` solved rows of the validation split (dataset units),
    the same in every worker (each reads the validation rows whole)."""
    import ray.train

    tables = [
        losses.solved_rows(t)
        for t in ray.train.get_dataset_shard("val").iter_batches(batch_size=SELECTION_ROWS, batch_format="pyarrow")
    ]
    table = pa.concat_tables(tables).slice(0, SELECTION_ROWS)
    rows = {name: losses.list_column(table, name, np.float64) for name in ("t", "value", "theta")}
    rows["channel"] = losses.list_column(table, "channel", np.int64)
    return rows


def keep_the_better(m: Model, net, warmup_weights: dict, rows: dict[str, np.ndarray]) -> dict:
    """After the training through the proxy: its network's R2 (SPEC 4, through the
    solver) on ``rows`` against the warm-up's (``warmup_weights``); where the warm-up's
    is higher (or only it is finite), its weights go back into ``net``."""
    plain = getattr(net, "module", net)
    judge = networks.build(plain.config).eval()  # on the CPU, beside the solver, wherever ``net`` trains
    judge.load_state_dict({name: v.detach().cpu() for name, v in plain.state_dict().items()})
    trained = float(losses.evaluate(m, judge, rows)[1.0].value)
    judge.load_state_dict(warmup_weights)
    warm = float(losses.evaluate(m, judge, rows)[1.0].value)
    better = warm > trained if np.isfinite(trained) else np.isfinite(warm)
    kept = "warmup" if better else "inference"
    if kept == "warmup":
        plain.load_state_dict(warmup_weights)  # copied onto the network's device
    return {"validation_r2": trained, "validation_r2_warmup": warm, "kept": kept, "validation_rows": len(rows["t"])}


def _workers_agree(net, seen_ids: list, world: int) -> dict:
    """DDP's two promises, checked at the end of each epoch: every worker holds the same
    weights (the largest difference from rank 0's), and the workers trained on disjoint
    shards (rows seen by more than one worker; rows each worker saw)."""
    ids = np.concatenate(seen_ids) if seen_ids else np.zeros(0, dtype=np.int64)
    if world == 1:
        return {"workers_max_weight_diff": 0.0, "shard_overlap": 0, "shard_rows": [len(ids)]}
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    weights = [torch.zeros_like(flat) for _ in range(world)]
    torch.distributed.all_gather(weights, flat)
    shards: list = [None] * world
    torch.distributed.all_gather_object(shards, ids.tolist())
    everything = np.concatenate([np.asarray(s, dtype=np.int64) for s in shards])
    return {
        "workers_max_weight_diff": float(max((w - weights[0]).abs().max() for w in weights).cpu()),
        "shard_overlap": int(len(everything) - len(np.unique(everything))),
        "shard_rows": [len(s) for s in shards],
    }


ERROR_FILE = "error.json"


def _report_error(message: str, stage: str) -> None:
    """End training with a message and no weights. Ray Train keeps only reports that
    carry a checkpoint, so the message travels as a checkpoint holding just error.json."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"error": message})
        return
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, ERROR_FILE), "w") as f:
            json.dump({"error": message, "stage": stage}, f)
        ray.train.report({"error": message}, checkpoint=ray.train.Checkpoint.from_directory(d))


def train(
    stage: str,
    model: str | Model,
    data: str,
    out: str,
    *,
    num_workers: int = TrainConfig.num_workers,
    epochs: int = TrainConfig.epochs,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    min_obs: int = TrainConfig.min_obs,
    network: dict | None = None,
    proxy_checkpoint: str | None = None,
    init_checkpoint: str | None = None,
    max_steps_per_epoch: int | None = TrainConfig.max_steps_per_epoch,
    storage_path: str | None = None,
    seed: int = TrainConfig.seed,
    max_failures: int = TrainConfig.max_failures,
    device: str = TrainConfig.device,
    gpu_timeout_s: float = TrainConfig.gpu_timeout_s,
) -> TrainSummary:
    """Train one stage with Ray Train's TorchTrainer and copy its last checkpoint to ``out``.
    ``device``: ``gpu`` (one GPU per worker, waited for up to ``gpu_timeout_s``), ``cpu``,
    or ``auto`` (GPUs when the cluster can provide one per worker; see :mod:`.devices`)."""
    phase = Phase(stage, out, epochs, lr, max_steps_per_epoch)
    return train_phases(
        [phase],
        model,
        data,
        num_workers=num_workers,
        batch_size=batch_size,
        min_obs=min_obs,
        network=network,
        proxy_checkpoint=proxy_checkpoint,
        init_checkpoint=init_checkpoint,
        storage_path=storage_path,
        seed=seed,
        max_failures=max_failures,
        device=device,
        gpu_timeout_s=gpu_timeout_s,
    )[0]


@dataclass
class Phase:
    """One stage of a Ray Train run: what it trains, where its checkpoint goes, and its
    own epochs, learning rate and steps per epoch (None: whole epochs)."""

    stage: str
    out: str
    epochs: int
    lr: float
    max_steps_per_epoch: int | None = None


def train_phases(
    phases: list[Phase],
    model: str | Model,
    data: str,
    *,
    num_workers: int = TrainConfig.num_workers,
    batch_size: int = TrainConfig.batch_size,
    min_obs: int = TrainConfig.min_obs,
    network: dict | None = None,
    proxy_checkpoint: str | None = None,
    init_checkpoint: str | None = None,
    storage_path: str | None = None,
    seed: int = TrainConfig.seed,
    max_failures: int = TrainConfig.max_failures,
    device: str = TrainConfig.device,
    gpu_timeout_s: float = TrainConfig.gpu_timeout_s,
) -> list[TrainSummary]:
    """Train ``phases`` in turn in one Ray Train run, each phase's network the next one's
    start (the inference network through the proxy, then fine-tuned through the solver),
    each phase's last checkpoint copied to its ``out``; one summary per phase. Each phase
    trains as a run of its own would (subsets' generator, optimizer, step count), without another
    run's start-up."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    for phase in phases:
        if phase.stage not in STAGES:
            raise ValueError(f"unknown stage {phase.stage!r}; one of {STAGES}")
        positive_int("epochs", phase.epochs)
    stages = [phase.stage for phase in phases]
    if len({s == "proxy" for s in stages}) > 1:  # one network is carried through the phases
        raise ValueError(f"phases {stages} train two kinds of network (the proxy and the inference network)")
    if stages[0] == "finetune" and not init_checkpoint:
        raise ValueError("stage 'finetune' needs init_checkpoint (an inference network trained through the proxy)")
    m = load_model(model)
    manifest = storage.read_manifest(data, model=m.name)
    check_model(m, manifest, f"dataset {data}")
    usable = manifest["n_samples"] - manifest.get("failures", 0)
    if usable <= VALIDATION_EVERY:
        raise ValueError(f"dataset {data} has {usable} usable samples (status 0); too few to train on")
    if "inference" in stages and not proxy_checkpoint:
        raise ValueError("stage 'inference' needs proxy_checkpoint (a trained proxy)")
    if "inference" in stages and proxy_checkpoint:  # refused here in one line, not in the workers
        checkpoint.load(proxy_checkpoint, model=m, kind="proxy")
    for name, value in (("num_workers", num_workers), ("batch_size", batch_size)):
        positive_int(name, value)

    ensure_ray()
    scaling = devices.scaling_for(device, num_workers, ray.cluster_resources(), devices.node_type_gpus())
    if scaling["use_gpu"]:  # CPUs per worker from the cluster the GPU nodes joined
        scaling = devices.scaling_for("gpu", num_workers, devices.wait_for_gpus(num_workers, gpu_timeout_s), None)
    use_gpu = scaling["use_gpu"]
    fs, root = storage.resolve(data)
    parts = ds_format.list_parts(fs, root)
    ds = ray.data.read_parquet(parts, filesystem=fs)
    offsets, scales = value_stats(pq.read_table(parts[0], filesystem=fs).slice(0, 4096), m)
    kind = "proxy" if stages[0] == "proxy" else "inference"
    net_config = networks.default_config(m, kind, value_offset=offsets, value_scale=scales, **(network or {}))
    if init_checkpoint:
        net_config = checkpoint.load(init_checkpoint, model=m, kind="inference")[1]["network"]
    cfg = {
        "phases": [
            {"stage": p.stage, "epochs": p.epochs, "lr": p.lr, "max_steps_per_epoch": p.max_steps_per_epoch}
            for p in phases
        ],
        "model": source_record(m),  # the workers rebuild the model from its source
        "network": net_config,
        "batch_size": batch_size,
        "min_obs": min_obs,
        "seed": seed,
        "manifest": manifest,
        "proxy_checkpoint": _absolute(proxy_checkpoint),
        "init_checkpoint": _absolute(init_checkpoint),
    }
    start = time.perf_counter()
    trainer = TorchTrainer(
        _loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(**scaling),
        run_config=RunConfig(
            name=f"{m.name}-{'-'.join(stages)}-{int(time.time())}",
            storage_path=storage_path or storage.beside(phases[-1].out, "ray_results"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": _split(ds, validation=False), "val": _split(ds, validation=True)},
        # the training rows are sharded over the workers; every worker reads the validation
        # rows whole, in its own process (no split coordinator to start: seconds a stage
        # on a small machine), so rank 0 reports the loss of all of them, not of its shard
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    wall = time.perf_counter() - start
    if result.checkpoint is None:
        raise RuntimeError(f"{stages[0]} training produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        if os.path.exists(os.path.join(d, ERROR_FILE)):
            with open(os.path.join(d, ERROR_FILE)) as f:
                error = json.load(f)
            raise FloatingPointError(f"{error.get('stage', stages[0])} training stopped: {error['error']}")
        finished = [os.path.join(d, FINISHED, str(k)) for k in range(len(phases))]
        seconds = []
        for done in finished[1:]:
            with open(os.path.join(done, PHASE_FILE)) as f:
                seconds.append(json.load(f)["seconds"])
        seconds.insert(0, wall - sum(seconds))  # the first phase's wall-clock holds the run's start-up
        summaries = []
        for phase, done, phase_s in zip(phases, finished, seconds):  # in order: the last phase's checkpoint last
            net, meta = checkpoint.load(done, model=m)
            checkpoint.save(
                phase.out,
                net,
                model=m,
                dataset_manifest=manifest,
                metrics=meta["metrics"],
                training={**meta["training"], "num_workers": num_workers, "use_gpu": use_gpu},
            )
            metrics = meta["metrics"]
            summaries.append(
                TrainSummary(
                    stage=phase.stage,
                    model=m.name,
                    checkpoint=phase.out,
                    epochs=phase.epochs,
                    steps=int(metrics["steps"]),
                    samples_per_s=float(metrics["samples_per_s"]),
                    wall_s=phase_s,
                    val_loss=float(metrics["val_loss"]),
                    num_workers=num_workers,
                    device="GPU" if use_gpu else "CPU",
                    excluded_rows=int(manifest.get("failures", 0)),
                )
            )
    return summaries


def _absolute(location: str | None) -> str | None:
    return None if location is None else storage.absolute(location)


def train_inference_and_report(
    model: str | Model,
    data: str,
    proxy_checkpoint: str,
    out: str,
    *,
    epochs: int = TrainConfig.epochs,
    warmup_epochs: int = FinetuneConfig.warmup_epochs,
    finetune_epochs: int = FinetuneConfig.finetune_epochs,
    finetune_lr: float = FinetuneConfig.finetune_lr,
    finetune_steps_per_epoch: int | None = FinetuneConfig.finetune_steps_per_epoch,
    **kwargs,
) -> dict:
    """Stage 3 in full: the Deep Set's warm-up (``warmup_epochs`` > 0; its checkpoint in
    ``warm-up/``), through the proxy (kept where it beats the warm-up), then
    (``finetune_epochs`` > 0) through the solver; then R^2 on the SPEC test set at 25/50/100% of n_obs beside the
    R^2 of the true parameters, written to ``training_summary.json`` in the checkpoint.
    (Callers then recalibrate its intervals: :func:`mechinfer.estimate.recalibration.calibrate_checkpoint`.)"""
    m = load_model(model)
    stage1_out = out if finetune_epochs == 0 else os.path.join(out, "through-proxy")
    lr = kwargs.pop("lr", TrainConfig.lr)
    max_steps = kwargs.pop("max_steps_per_epoch", TrainConfig.max_steps_per_epoch)
    phases = [Phase("inference", stage1_out, epochs, lr, max_steps)]
    if warmup_epochs > 0:
        phases.insert(0, Phase("warmup", os.path.join(out, "warm-up"), warmup_epochs, lr, max_steps))
    if finetune_epochs > 0:
        phases.append(Phase("finetune", out, finetune_epochs, finetune_lr, finetune_steps_per_epoch))
    summaries = train_phases(phases, m, data, proxy_checkpoint=proxy_checkpoint, **kwargs)
    test = spec_test_set(m)
    ok = test["status"] == SolveStatus.OK
    test = {k: v[ok] for k, v in test.items()}
    clean = likelihood.to_noise_space(m, test["clean"], test["channel"])  # metrics in the noise space
    sigma = losses.true_noise_scale(m, test)  # None: each channel's sigma
    r2_truth = r2(m, clean, test["channel"], likelihood.to_noise_space(m, test["value"], test["channel"]), sigma=sigma)
    units = "" if sigma is None else "; R2 in units of each test sample's true noise scale"
    lines = [str(s) for s in summaries] + [
        f"SPEC test set ({len(test['t'])} samples, seed {TEST_SEED}{units}):",
        f"  R2 of the true parameters: {r2_truth}",
    ]
    report = {"model": m.name, "stages": [s.__dict__ for s in summaries], "r2_true_parameters": r2_truth.__dict__}
    if sigma is not None:
        report["r2_units"] = "each test sample's true noise scale"
    stage1_net, stage1_meta = checkpoint.load(stage1_out, model=m, kind="inference")
    stage1 = stage1_meta["metrics"]
    if "kept" in stage1:  # the training through the proxy against the warm-up (keep_the_better)
        lines.append(
            f"  through the proxy: validation R2 {stage1['validation_r2']:.4f} against the warm-up's "
            f"{stage1['validation_r2_warmup']:.4f} ({stage1['validation_rows']} rows): "
            + ("kept" if stage1["kept"] == "inference" else "the warm-up's network goes on in its place")
        )
        report["through_proxy_kept"] = stage1["kept"] == "inference"
    # the report's keys name the stage ("through the proxy") whichever network it kept; the text says which
    shown = "through the proxy" if stage1.get("kept", "inference") == "inference" else "of the warm-up"
    nets = [("through the proxy", stage1_net, shown)]
    if finetune_epochs:
        finetuned = "fine-tuned through the solver"
        nets.append((finetuned, checkpoint.load(out, model=m, kind="inference")[0], finetuned))
    for label, net, shown in nets:
        r2_net = losses.evaluate(m, net, test, fractions=(0.25, 0.5, 1.0))
        lines += [f"  R2 of the network {shown}, {int(f * 100)}% of n_obs: {r}" for f, r in r2_net.items()]
        report[f"r2_network ({label})"] = {f"{int(f * 100)}%": r.__dict__ for f, r in r2_net.items()}
        if m.observation is not None:  # noise scales that vary with the parameters: also R2_true and the NLL
            seen = losses.evaluate_observed(m, net, test)
            lines += [
                f"  R2_true of the network {shown}: {seen['r2_true']}; median NLL per observation "
                f"{seen['nll_network']:.4f} (true parameters {seen['nll_true_parameters']:.4f}); "
                f"{seen['failed']} estimates not simulated"
            ]
            report[f"observed ({label})"] = {**seen, "r2_true": seen["r2_true"].__dict__}
    storage.write_json_to(os.path.join(out, "training_summary.json"), report)
    report["text"] = "\n".join(lines)
    return report
