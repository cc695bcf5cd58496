"""Where results live and how they are written: locations (a local path or any pyarrow
filesystem URI, e.g. ``s3://bucket/x``), atomic writes (a temporary name, then a rename,
so a reader never sees half a file) and the manifest checks every reader makes.

Every module that writes or reads a result goes through here, so a location means the
same thing to the simulation, training, baselines, reports and the pipeline.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs

MANIFEST = "manifest.json"


def is_uri(location: str) -> bool:
    return "://" in location


def absolute(location: str) -> str:
    """A URI as it is, a local path made absolute (Ray workers and submitted jobs run in
    other working directories)."""
    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a URI or a local path."""
    location = absolute(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise ValueError(f"cannot use {location!r} as a location: {exc}") from None


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_file(fs: pafs.FileSystem, path: str, writer: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``writer`` fills a temporary file beside it, which is
    renamed to ``path`` when complete."""
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent}/_tmp-{uuid.uuid4().hex}-{name}" if parent else f"_tmp-{uuid.uuid4().hex}-{name}"
    try:
        with fs.open_output_stream(tmp) as f:
            writer(f)
        fs.move(tmp, path)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_file(tmp)
        raise


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    write_file(fs, path, lambda f: f.write(data))


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """The JSON object at ``path``, or None when there is no file."""
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_json(fs: pafs.FileSystem, path: str, data: dict) -> None:
    write_bytes(fs, path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


LOCAL = pafs.LocalFileSystem()


def write_local(path: str, writer: Callable[[IO[bytes]], Any]) -> None:
    """:func:`write_file` on the local filesystem (figures, reports, checkpoints)."""
    write_file(LOCAL, os.path.abspath(path), writer)


def read_local_json(path: str) -> dict | None:
    return read_json(LOCAL, os.path.abspath(path))


def write_local_json(path: str, data: dict) -> None:
    write_json(LOCAL, os.path.abspath(path), data)


def local_copy(location: str) -> str:
    """A local directory holding what ``location`` holds (downloaded when it is a URI)."""
    if not is_uri(location):
        return absolute(location)
    fs, root = resolve(location)
    dest = tempfile.mkdtemp(prefix="mechinfer-")
    pafs.copy_files(root, dest, source_filesystem=fs)
    return dest


def read_manifest(location: str, *, what: str = "dataset", model: str | None = None, kind: str | None = None) -> dict:
    """The manifest of a complete result at ``location``, checked: present (written last,
    so its absence means unfinished), of this SPEC version, of ``model`` and ``kind``
    (the manifest's ``kind`` field; datasets have none) when given."""
    from . import SPEC_VERSION

    fs, root = resolve(location)
    manifest = read_json(fs, f"{root}/{MANIFEST}")
    if manifest is None:
        raise ValueError(f"{location} is not a complete {what}: it has no {MANIFEST}")
    if manifest.get("spec_version") != SPEC_VERSION:
        raise ValueError(
            f"{location} was written for spec version {manifest.get('spec_version')}, this code reads {SPEC_VERSION}"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise ValueError(f"{location} is not a {what} result (its manifest says kind {manifest.get('kind')!r})")
    if model is not None and manifest.get("model") != model:
        raise ValueError(f"{what} {location} holds {manifest.get('model')!r} samples, not {model!r}")
    return manifest
