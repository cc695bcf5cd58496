"""Produce the pretrained checkpoint shipped for a model: simulate (or reuse) a dataset,
train the proxy, train and fine-tune the inference network, evaluate on the SPEC test
set, and copy the result with its training summary into the package."""

from __future__ import annotations

import logging
import os
import shutil
from importlib import resources
from typing import Any

from .. import storage
from ..config import PretrainConfig
from ..data.generate import simulate_dataset
from ..estimate.recalibration import calibrate_checkpoint
from ..learn import checkpoint
from ..learn.trainer import train, train_inference_and_report
from ..models import load_model
from ..models.base import Model
from ..models.sources import recorded_hash

log = logging.getLogger(__name__)
_D = PretrainConfig


def build_pretrained(
    model: str | Model,
    work: str,
    *,
    n: int = _D.n,
    seed: int = _D.seed,
    data: str | None = None,
    proxy_epochs: int = _D.proxy_epochs,
    epochs: int = _D.epochs,
    warmup_epochs: int = _D.warmup_epochs,
    finetune_epochs: int = _D.finetune_epochs,
    finetune_steps: int | None = _D.finetune_steps,
    batch_size: int = _D.batch_size,
    width: int = _D.width,
    depth: int = _D.depth,
    num_workers: int = _D.num_workers,
    device: str = _D.device,
    gpu_timeout_s: float = _D.gpu_timeout_s,
    recalibration_samples: int = _D.recalibration_samples,
    install: bool = True,
    command: str = "",
) -> dict:
    """Train a model's networks from scratch and, with ``install``, copy them with their
    training summary into the package (``mechinfer/pretrained/<model>/``; built-in
    models only)."""
    m = load_model(model)
    if install and m.source is not None:
        raise ValueError(
            f"model {m.name!r} comes from a file: only built-in models ship checkpoints; pass --no-install"
        )
    os.makedirs(work, exist_ok=True)
    data = data or os.path.join(work, f"data-{m.name}")
    try:
        manifest = storage.read_manifest(data)
        if (manifest["model"], recorded_hash(manifest), manifest["n_samples"], manifest["seed"]) != (
            m.name,
            m.source_hash,
            n,
            seed,
        ):
            raise ValueError(
                f"{data} holds another dataset ({manifest['model']}, {manifest['n_samples']} samples, "
                f"seed {manifest['seed']})"
            )
    except ValueError as exc:
        if "no manifest.json" not in str(exc):
            raise
        log.info("%s", simulate_dataset(m, n, seed, data))
    network = {"width": width, "depth": depth}
    workers: dict[str, Any] = {"num_workers": num_workers, "device": device, "gpu_timeout_s": gpu_timeout_s}
    proxy = os.path.join(work, "proxy")
    proxy_summary = train(
        "proxy",
        m,
        data,
        proxy,
        epochs=proxy_epochs,
        batch_size=batch_size,
        network=network,
        **workers,
    )
    log.info("%s", proxy_summary)
    out = os.path.join(work, "inference")
    report = train_inference_and_report(
        m,
        data,
        proxy,
        out,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        finetune_epochs=finetune_epochs,
        finetune_steps_per_epoch=finetune_steps,
        batch_size=batch_size,
        network=network,
        **workers,
    )
    report["command"] = command
    report["proxy"] = proxy_summary.__dict__
    report["text"] = f"{proxy_summary}\n{report['text']}"
    if recalibration_samples > 0:
        report["text"] += "\n" + calibrate_checkpoint(out, recalibration_samples)
    storage.write_local_json(
        os.path.join(out, "training_summary.json"), {k: v for k, v in report.items() if k != "text"}
    )
    text = f"$ {command}\n\n{report['text']}\n"
    storage.write_local(os.path.join(out, "training_summary.txt"), lambda f: f.write(text.encode()))
    if install:
        dest = str(resources.files("mechinfer") / "pretrained" / m.name)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        for name in (checkpoint.WEIGHTS, checkpoint.META, "training_summary.json", "training_summary.txt"):
            shutil.copy(os.path.join(out, name), dest)
        if finetune_epochs:  # the network before fine-tuning: Table 1's "Deep Inference" row
            os.makedirs(os.path.join(dest, "through-proxy"))
            for name in (checkpoint.WEIGHTS, checkpoint.META):
                shutil.copy(os.path.join(out, "through-proxy", name), os.path.join(dest, "through-proxy"))
        report["installed"] = dest
    return report
