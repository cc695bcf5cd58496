"""Network checkpoints: a directory with the weights (``weights.pt``, loadable with
``torch.load(weights_only=True)``, so loading never unpickles code) and
``checkpoint.json``: the network config, the model name, the spec version, the manifest
of the dataset it was trained on, its validation metrics and training facts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
from pathlib import Path

import torch

from .. import SPEC_VERSION, storage
from . import networks

WEIGHTS = "weights.pt"
META = "checkpoint.json"


def save(
    directory: str,
    net: torch.nn.Module,
    *,
    model: str,
    dataset_manifest: dict | None,
    metrics: dict | None = None,
    training: dict | None = None,
    extra_files: dict | None = None,
) -> dict:
    """Write a checkpoint into ``directory`` (created); the metadata file goes last."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(net).state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"refusing to save a checkpoint with non-finite weights ({k})")
    _atomic_torch_save(state, path / WEIGHTS)
    for name, obj in (extra_files or {}).items():
        _atomic_torch_save(obj, path / name)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()[:12]
    meta = {
        "spec_version": SPEC_VERSION,
        "model": model,
        "network": _unwrap(net).config,
        "checkpoint_id": f"{model}-{_unwrap(net).config['kind']}-{digest}",
        "dataset": dataset_manifest,
        "metrics": metrics or {},
        "training": training or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_local_json(str(path / META), meta)
    return meta


def load(source: str, *, model: str | None = None, kind: str | None = None, map_location="cpu"):
    """(network in eval mode, metadata) from a checkpoint directory or URI. Refuses a
    checkpoint of another model, kind or spec version with a message naming both."""
    local = storage.local_copy(source)
    meta_path = Path(local) / META
    if not meta_path.exists():
        raise ValueError(f"{source} is not a mechinfer checkpoint: it has no {META}")
    meta = json.loads(meta_path.read_text())
    if meta.get("spec_version") != SPEC_VERSION:
        raise ValueError(
            f"checkpoint {source} is for spec version {meta.get('spec_version')}, "
            f"this code implements spec version {SPEC_VERSION}"
        )
    if model is not None and meta.get("model") != model:
        raise ValueError(f"checkpoint {source} is for model {meta.get('model')!r}, not {model!r}")
    if kind is not None and meta["network"].get("kind") != kind:
        raise ValueError(f"checkpoint {source} holds a {meta['network'].get('kind')} network, not a {kind} network")
    net = networks.build(meta["network"])
    state = torch.load(Path(local) / WEIGHTS, map_location=map_location, weights_only=True)
    net.load_state_dict(state)
    return net.eval(), meta


def _unwrap(net):
    return getattr(net, "module", net)  # DistributedDataParallel holds the network as .module


def _atomic_torch_save(obj, target: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    storage.write_local(str(target), lambda f: f.write(buffer.getvalue()))
