"""Ray Tune over the Deep Set settings (SPEC 6, stage 4), with ASHA early stopping on the
validation split (sample_id % 20 == 0) of a training dataset, never the SPEC test set.

Each trial trains through the frozen proxy in its own process on a capped number of
training rows (read from the Parquet files, so no trial holds a large dataset whole) and
reports the validation NLL every ``steps_per_report`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from .. import storage
from ..config import NETWORK_KEYS, NetworkConfig, TuneConfig
from ..data import format as ds_format
from ..models import load_model
from ..models.base import Model
from ..models.sources import check_model, model_from_record, source_record
from ..runtime import ensure_ray
from . import checkpoint, losses, networks
from .trainer import VALIDATION_EVERY, value_stats

BEST_CONFIG = "best_config.json"


# Values tried for the NetworkConfig fields that are numbers; a field with a fixed set of
# choices (pooling, encodings) tries every one of them.
NETWORK_VALUES = {"width": (64, 128, 256), "depth": (2, 3, 4)}


def search_space() -> dict:
    """Every :class:`~mechinfer.config.NetworkConfig` field, the learning rate and the
    batch size."""
    from ray import tune

    space = {
        f.name: tune.choice(list(f.metadata.get("choices") or NETWORK_VALUES[f.name]))
        for f in dataclasses.fields(NetworkConfig)
    }
    return {**space, "lr": tune.loguniform(1e-4, 3e-3), "batch_size": tune.choice([128, 256, 512])}


def _rows(data: str, validation: bool, limit: int, model: Model | None = None) -> dict[str, torch.Tensor]:
    fs, root = storage.resolve(data)
    ds = pads.dataset(ds_format.list_parts(fs, root), filesystem=fs, format="parquet")
    out, n = [], 0
    for batch in ds.to_batches():
        is_val = np.asarray(batch["sample_id"]) % VALIDATION_EVERY == 0
        t = pa.Table.from_batches([batch]).filter(pa.array(is_val if validation else ~is_val))
        out.append(t)
        n += t.num_rows
        if n >= limit:
            break
    return losses.batch_tensors(pa.concat_tables(out).slice(0, limit), model)


def _trial(config: dict) -> None:
    from ray import tune

    torch.set_num_threads(1)
    m = model_from_record(json.loads(config["model"]))  # from its stored source
    train_rows = _rows(config["data"], False, config["max_rows"], m)
    val_rows = _rows(config["data"], True, 2048, m)
    proxy, _ = checkpoint.load(config["proxy"], model=m, kind="proxy")
    proxy.requires_grad_(False)
    net = networks.build(
        networks.default_config(
            m,
            "inference",
            value_offset=config["value_offset"],
            value_scale=config["value_scale"],
            **{k: config[k] for k in NETWORK_KEYS},
        )
    )
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    gen = torch.Generator().manual_seed(0)
    n = len(train_rows["z"])
    for report in range(config["max_steps"] // config["steps_per_report"]):
        for _ in range(config["steps_per_report"]):
            idx = torch.randint(0, n, (config["batch_size"],), generator=gen)
            loss = losses.inference_loss(
                m,
                net,
                {k: v[idx] for k, v in train_rows.items()},
                through="proxy",
                proxy=proxy,
                min_obs=config["min_obs"],
                generator=gen,
            )
            if not torch.isfinite(loss):
                tune.report({"val_nll": float("inf"), "steps": (report + 1) * config["steps_per_report"]})
                return
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = losses.inference_loss(m, net, val_rows, through="proxy", proxy=proxy)
        tune.report({"val_nll": float(val), "steps": (report + 1) * config["steps_per_report"]})


def tune_inference(
    model: str | Model,
    data: str,
    proxy: str,
    out: str,
    *,
    num_samples: int = TuneConfig.num_samples,
    max_steps: int = TuneConfig.max_steps,
    steps_per_report: int = TuneConfig.steps_per_report,
    max_rows: int = TuneConfig.max_rows,
    min_obs: int = TuneConfig.min_obs,
    seed: int = TuneConfig.seed,
) -> dict:
    """Search the Deep Set settings; write ``best_config.json`` and ``trials.csv`` to ``out``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    m = load_model(model)
    check_model(m, storage.read_manifest(data, model=m.name), f"dataset {data}")
    checkpoint.load(proxy, model=m, kind="proxy")  # fails early with a message
    if num_samples <= 0 or max_steps < steps_per_report:
        raise ValueError("num_samples must be positive and max_steps at least steps_per_report")
    ensure_ray()
    fs, root = storage.resolve(data)
    offsets, scales = value_stats(
        pads.dataset(ds_format.list_parts(fs, root)[:1], filesystem=fs, format="parquet").head(4096), m
    )
    space = {
        **search_space(),
        "model": json.dumps(source_record(m)),  # one opaque value for Tune (not a nested config)
        "data": storage.absolute(data),
        "proxy": storage.absolute(proxy),
        "max_steps": max_steps,
        "steps_per_report": steps_per_report,
        "max_rows": max_rows,
        "min_obs": min_obs,
        "value_offset": offsets,
        "value_scale": scales,
    }
    start = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_nll",
            mode="min",
            num_samples=num_samples,
            scheduler=ASHAScheduler(max_t=max_steps // steps_per_report, grace_period=2),
            search_alg=tune.search.BasicVariantGenerator(random_state=seed),
        ),
        run_config=tune.RunConfig(
            name=f"tune-{m.name}-{int(time.time())}", storage_path=os.path.abspath(os.path.join(out, "ray_results"))
        ),
    )
    results = tuner.fit()
    best = results.get_best_result()
    # the best result was chosen by its reported val_nll, and carries its trial's config
    assert best.metrics is not None and best.config is not None
    keys = (*NETWORK_KEYS, "lr", "batch_size")
    best_config = {
        "model": m.name,
        "model_hash": m.source_hash,
        "val_nll": best.metrics["val_nll"],
        **{k: best.config[k] for k in keys},
    }
    os.makedirs(out, exist_ok=True)
    storage.write_local_json(os.path.join(out, BEST_CONFIG), best_config)
    table = results.get_dataframe()
    cols = [c for c in table.columns if c in ("val_nll", "steps", "training_iteration")] + [f"config/{k}" for k in keys]
    table[cols].sort_values("val_nll").to_csv(os.path.join(out, "trials.csv"), index=False)
    return {
        "best": best_config,
        "trials": len(table),
        "wall_s": time.perf_counter() - start,
        "table": table[cols].sort_values("val_nll").to_string(index=False),
    }
