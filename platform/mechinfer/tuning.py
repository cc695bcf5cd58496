"""Ray Tune over the Deep Set settings (SPEC 6, stage 4), with ASHA early stopping on the
validation split (sample_id % 20 == 0) of a training dataset, never the SPEC test set.

Each trial trains through the frozen proxy in its own process on a capped number of
training rows (read from the Parquet files, so no trial holds a large dataset whole) and
reports the validation NLL every ``steps_per_report`` steps.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from . import checkpoint, dataset, networks, training
from .models import get_model
from .train import VALIDATION_EVERY, value_stats

BEST_CONFIG = "best_config.json"


def search_space():
    from ray import tune

    return {
        "width": tune.choice([64, 128, 256]),
        "depth": tune.choice([2, 3, 4]),
        "pooling": tune.choice(["mean", "max", "meanmax"]),
        "time_encoding": tune.choice(["linear", "fourier"]),
        "channel_encoding": tune.choice(["onehot", "embedding"]),
        "lr": tune.loguniform(1e-4, 3e-3),
        "batch_size": tune.choice([128, 256, 512]),
    }


def _rows(data: str, validation: bool, limit: int) -> dict[str, torch.Tensor]:
    fs, root = dataset.resolve(data)
    ds = pads.dataset(dataset.list_parts(fs, root), filesystem=fs, format="parquet")
    out, n = [], 0
    for batch in ds.to_batches():
        is_val = np.asarray(batch["sample_id"]) % VALIDATION_EVERY == 0
        t = pa.Table.from_batches([batch]).filter(pa.array(is_val if validation else ~is_val))
        out.append(t)
        n += t.num_rows
        if n >= limit:
            break
    return training.batch_tensors(pa.concat_tables(out).slice(0, limit))


def _trial(config: dict) -> None:
    from ray import tune

    torch.set_num_threads(1)
    m = get_model(config["model"])
    train_rows = _rows(config["data"], False, config["max_rows"])
    val_rows = _rows(config["data"], True, 2048)
    proxy, _ = checkpoint.load(config["proxy"], model=m.name, kind="proxy")
    proxy.requires_grad_(False)
    keys = ("width", "depth", "pooling", "time_encoding", "channel_encoding")
    net = networks.build(networks.default_config(m, "inference", value_offset=config["value_offset"],
                                                 value_scale=config["value_scale"], **{k: config[k] for k in keys}))
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    gen = torch.Generator().manual_seed(0)
    n = len(train_rows["z"])
    for report in range(config["max_steps"] // config["steps_per_report"]):
        for _ in range(config["steps_per_report"]):
            idx = torch.randint(0, n, (config["batch_size"],), generator=gen)
            loss = training.inference_loss(m, net, {k: v[idx] for k, v in train_rows.items()}, through="proxy",
                                           proxy=proxy, min_obs=config["min_obs"], generator=gen)
            if not torch.isfinite(loss):
                tune.report({"val_nll": float("inf"), "steps": (report + 1) * config["steps_per_report"]})
                return
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = training.inference_loss(m, net, val_rows, through="proxy", proxy=proxy)
        tune.report({"val_nll": float(val), "steps": (report + 1) * config["steps_per_report"]})


def tune_inference(model: str, data: str, proxy: str, out: str, *, num_samples: int = 8, max_steps: int = 600,
                   steps_per_report: int = 100, max_rows: int = 50_000, min_obs: int = 3, seed: int = 0) -> dict:
    """Search the Deep Set settings; write ``best_config.json`` and ``trials.csv`` to ``out``."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    m = get_model(model)
    manifest = dataset.read_manifest(data)
    if manifest["model"] != m.name:
        raise ValueError(f"dataset {data} holds {manifest['model']!r} samples, not {m.name!r}")
    checkpoint.load(proxy, model=m.name, kind="proxy")  # fails early with a message
    if num_samples <= 0 or max_steps < steps_per_report:
        raise ValueError("num_samples must be positive and max_steps at least steps_per_report")
    if not ray.is_initialized():
        ray.init()
    fs, root = dataset.resolve(data)
    offsets, scales = value_stats(pads.dataset(dataset.list_parts(fs, root)[:1], filesystem=fs,
                                               format="parquet").head(4096))
    space = {**search_space(), "model": m.name, "data": os.path.abspath(data) if "://" not in data else data,
             "proxy": os.path.abspath(proxy), "max_steps": max_steps, "steps_per_report": steps_per_report,
             "max_rows": max_rows, "min_obs": min_obs, "value_offset": offsets, "value_scale": scales}
    start = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_nll", mode="min", num_samples=num_samples,
                                    scheduler=ASHAScheduler(max_t=max_steps // steps_per_report, grace_period=2),
                                    search_alg=tune.search.BasicVariantGenerator(random_state=seed)),
        run_config=tune.RunConfig(name=f"tune-{m.name}-{int(time.time())}",
                                  storage_path=os.path.abspath(os.path.join(out, "ray_results"))),
    )
    results = tuner.fit()
    best = results.get_best_result()
    keys = ("width", "depth", "pooling", "time_encoding", "channel_encoding", "lr", "batch_size")
    best_config = {"model": m.name, "val_nll": best.metrics["val_nll"], **{k: best.config[k] for k in keys}}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, BEST_CONFIG), "w") as f:
        json.dump(best_config, f, indent=2)
    table = results.get_dataframe()
    cols = [c for c in table.columns if c in ("val_nll", "steps", "training_iteration")] + \
        [f"config/{k}" for k in keys]
    table[cols].sort_values("val_nll").to_csv(os.path.join(out, "trials.csv"), index=False)
    return {"best": best_config, "trials": len(table), "wall_s": time.perf_counter() - start,
            "table": table[cols].sort_values("val_nll").to_string(index=False)}
