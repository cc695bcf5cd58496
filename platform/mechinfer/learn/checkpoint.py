"""Network checkpoints: a directory with the weights (``weights.pt``, loadable with
``torch.load(weights_only=True)``, so loading never unpickles code) and
``checkpoint.json``: the network config, the model (its name, ``model_hash`` and
``model_source``, a copy of its files: SPEC 11), the spec version, the manifest of the
dataset it was trained on, its validation metrics and training facts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import torch

from .. import SPEC_VERSION, storage
from ..models import get_model, list_models
from ..models.base import Model
from ..models.sources import check_model, source_record
from . import networks

WEIGHTS = "weights.pt"
META = "checkpoint.json"


def save(
    directory: str,
    net: torch.nn.Module,
    *,
    model: str | Model,
    dataset_manifest: dict | None,
    metrics: dict | None = None,
    training: dict | None = None,
    extra_files: dict | None = None,
) -> dict:
    """Write a checkpoint as ``directory`` (replacing one there), whole or not at all:
    every file goes into a temporary directory beside it, which is renamed into place
    when complete, so a reader never sees new weights beside old metadata, or half a
    checkpoint after a crash. At a URI (an object store has no renames of directories)
    the old checkpoint's metadata goes first, so it no longer loads, and the new one's
    last, after the weights: a checkpoint loads only when its writer finished."""
    if storage.is_uri(directory):
        with tempfile.TemporaryDirectory(prefix="mechinfer-") as d:
            meta = save(
                os.path.join(d, "checkpoint"),
                net,
                model=model,
                dataset_manifest=dataset_manifest,
                metrics=metrics,
                training=training,
                extra_files=extra_files,
            )
            _upload(os.path.join(d, "checkpoint"), directory)
        return meta
    path = Path(directory).absolute()
    state = {k: v.detach().cpu() for k, v in _unwrap(net).state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"refusing to save a checkpoint with non-finite weights ({k})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"_tmp-{uuid.uuid4().hex}-{path.name}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / WEIGHTS)
        for name, obj in (extra_files or {}).items():
            torch.save(obj, tmp / name)
        digest = hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest()[:12]
        meta = {
            "spec_version": SPEC_VERSION,
            **_model_fields(model),  # model, model_hash, model_source
            "network": _unwrap(net).config,
            "checkpoint_id": f"{_name(model)}-{_unwrap(net).config['kind']}-{digest}",
            "dataset": dataset_manifest,
            "metrics": metrics or {},
            "training": training or {},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        storage.write_local_json(str(tmp / META), meta)
        _replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _name(model: str | Model) -> str:
    return model.name if isinstance(model, Model) else model


def _model_fields(model: str | Model) -> dict:
    """The model's name, hash and source as a checkpoint stores them (a registered name
    given as a string is that built-in model)."""
    if isinstance(model, str):
        if model not in list_models():
            return {"model": model}
        model = get_model(model)
    return source_record(model)


def _replace_directory(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; a checkpoint already there is moved aside first and
    deleted after (two renames: the gap between them shows no directory, never a mix).
    Subdirectories of the old one that the new one lacks move into the new one first:
    a checkpoint may hold the checkpoint it was trained from (``through-proxy/``)."""
    if not target.exists():
        os.rename(new, target)
        return
    files = [p.name for p in target.iterdir() if not p.is_dir()]
    if files and not (target / META).exists():
        raise ValueError(f"{target} holds files and is not a checkpoint: refusing to replace it")
    for sub in target.iterdir():
        if sub.is_dir() and not (new / sub.name).exists():
            os.rename(sub, new / sub.name)
    old = target.parent / f"_old-{uuid.uuid4().hex}-{target.name}"
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _upload(local: str, location: str) -> None:
    """The checkpoint directory ``local`` to the URI ``location``, replacing the files
    (never the nested checkpoints) of one there; anything else there is refused."""
    fs, root = storage.resolve(location)
    old = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)) if i.type == pafs.FileType.File]
    if old and META not in {i.base_name for i in old}:
        raise ValueError(f"{location} holds files and is not a checkpoint: refusing to replace it")
    for i in sorted(old, key=lambda i: i.base_name != META):  # the metadata first
        fs.delete_file(i.path)
    storage.upload_directory(local, location, last=META)


def load(source: str, *, model: str | Model | None = None, kind: str | None = None, map_location="cpu"):
    """(network in eval mode, metadata) from a checkpoint directory or URI. Refuses a
    checkpoint of another model (its name; for a Model, also its content hash), kind or
    spec version with a message naming both."""
    with storage.local_copy(source) as local:
        return _load(source, Path(local), model, kind, map_location)


def _load(source: str, local: Path, model: str | Model | None, kind: str | None, map_location):
    meta_path = local / META
    if not meta_path.exists():
        raise ValueError(f"{source} is not a mechinfer checkpoint: it has no {META}")
    meta = json.loads(meta_path.read_text())
    if meta.get("spec_version") != SPEC_VERSION:
        raise ValueError(
            f"checkpoint {source} is for spec version {meta.get('spec_version')}, "
            f"this code implements spec version {SPEC_VERSION}"
        )
    if isinstance(model, Model):
        check_model(model, meta, f"checkpoint {source}")
    elif model is not None and meta.get("model") != model:
        raise ValueError(f"checkpoint {source} is for model {meta.get('model')!r}, not {model!r}")
    if kind is not None and meta["network"].get("kind") != kind:
        raise ValueError(f"checkpoint {source} holds a {meta['network'].get('kind')} network, not a {kind} network")
    net = networks.build(meta["network"])
    state = torch.load(local / WEIGHTS, map_location=map_location, weights_only=True)
    net.load_state_dict(state)
    return net.eval(), meta


def _unwrap(net):
    return getattr(net, "module", net)  # DistributedDataParallel holds the network as .module
