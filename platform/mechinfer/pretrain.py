"""Produce the pretrained checkpoint shipped for a model: simulate (or reuse) a dataset,
train the proxy, train and fine-tune the inference network, evaluate on the SPEC test
set, and copy the result with its training summary into the package."""
from __future__ import annotations

import json
import os
import shutil
from importlib import resources

from . import checkpoint, dataset
from .generate import simulate_dataset
from .train import train, train_inference_and_report


def build_pretrained(model: str, work: str, *, n: int, seed: int = 0, data: str | None = None,
                     proxy_epochs: int = 3, epochs: int = 3, finetune_epochs: int = 1,
                     finetune_steps: int | None = 200, batch_size: int = 256, width: int = 128, depth: int = 3,
                     num_workers: int = 1, install: bool = True, command: str = "") -> dict:
    os.makedirs(work, exist_ok=True)
    data = data or os.path.join(work, f"data-{model}")
    try:
        manifest = dataset.read_manifest(data)
        if (manifest["model"], manifest["n_samples"], manifest["seed"]) != (model, n, seed):
            raise ValueError(f"{data} holds another dataset ({manifest['model']}, {manifest['n_samples']} samples, "
                             f"seed {manifest['seed']})")
    except ValueError as exc:
        if "no manifest.json" not in str(exc):
            raise
        print(simulate_dataset(model, n, seed, data))
    network = {"width": width, "depth": depth}
    proxy = os.path.join(work, "proxy")
    proxy_summary = train("proxy", model, data, proxy, epochs=proxy_epochs, batch_size=batch_size, network=network,
                          num_workers=num_workers)
    print(proxy_summary)
    out = os.path.join(work, "inference")
    report = train_inference_and_report(model, data, proxy, out, epochs=epochs, finetune_epochs=finetune_epochs,
                                        finetune_steps_per_epoch=finetune_steps, batch_size=batch_size,
                                        network=network, num_workers=num_workers)
    report["command"] = command
    report["proxy"] = proxy_summary.__dict__
    report["text"] = f"{proxy_summary}\n{report['text']}"
    with open(os.path.join(out, "training_summary.json"), "w") as f:
        json.dump({k: v for k, v in report.items() if k != "text"}, f, indent=2)
    with open(os.path.join(out, "training_summary.txt"), "w") as f:
        f.write(f"$ {command}\n\n{report['text']}\n")
    if install:
        dest = str(resources.files("mechinfer") / "pretrained" / model)
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
