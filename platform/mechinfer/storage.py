"""Where results live and how they are written: locations (a local path or any pyarrow
filesystem URI, e.g. ``s3://bucket/x``), atomic writes (a temporary name, then a rename,
so a reader never sees half a file) and the manifest checks every reader makes.

Every module that writes or reads a result goes through here, so a location means the
same thing to the simulation, training, baselines, reports and the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
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


def beside(location: str, name: str) -> str:
    """The location ``name`` in the same directory (or URI prefix) as ``location``."""
    if is_uri(location):
        return f"{location.rstrip('/').rsplit('/', 1)[0]}/{name}"
    return os.path.join(os.path.dirname(absolute(location).rstrip(os.sep)), name)


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


def write_json_to(location: str, data: dict) -> None:
    """:func:`write_json` at a local path or URI."""
    fs, path = resolve(location)
    write_json(fs, path, data)


def upload_directory(local: str, location: str, *, last: str | None = None) -> None:
    """Copy every file under the local directory ``local`` to ``location`` (a URI or a
    path), each written whole (:func:`write_file`); the file named ``last`` (at the top)
    after all the others, so that its presence says the rest is there."""
    fs, root = resolve(location)
    make_directory(fs, root, location)
    files = sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file())
    if last in files:
        files.remove(last)
        files.append(last)
    for name in files:
        if "/" in name:
            fs.create_dir(f"{root}/{name.rsplit('/', 1)[0]}", recursive=True)
        with open(os.path.join(local, name), "rb") as src:

            def copy(dest: IO[bytes], src: IO[bytes] = src) -> None:
                shutil.copyfileobj(src, dest)

            write_file(fs, f"{root}/{name}", copy)


@contextlib.contextmanager
def output_directory(location: str, *, last: str | None = None) -> Iterator[str]:
    """``with output_directory(location) as path``: a local directory for outputs that
    end up at ``location``: the directory itself, or for a URI a temporary one whose
    files are uploaded (``last`` after the others) when the block ends without an error."""
    if not is_uri(location):
        yield absolute(location)
        return
    with tempfile.TemporaryDirectory(prefix="mechinfer-") as local:
        yield local
        upload_directory(local, location, last=last)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """``with local_copy(location) as path``: a local directory holding what ``location``
    holds: the directory itself, or for a URI a download, deleted on leaving."""
    if not is_uri(location):
        yield absolute(location)
        return
    fs, root = resolve(location)
    with tempfile.TemporaryDirectory(prefix="mechinfer-") as dest:
        pafs.copy_files(root, dest, source_filesystem=fs)
        yield dest


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


def make_directory(fs: pafs.FileSystem, root: str, location: str) -> None:
    """Create the output directory ``root`` (``location`` as the user gave it) unless it
    exists; a file in its place or an unwritable parent is refused with that message."""
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ValueError(f"output location {location} is a file, not a directory")
    try:
        fs.create_dir(root, recursive=True)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"cannot write to output location {location}: {exc}") from None


LOCK = "_lock.json"
log = logging.getLogger(__name__)


class LocationInUse(ValueError):
    """Another process is writing to the same output location."""


@contextlib.contextmanager
def lock(location: str, what: str) -> Iterator[None]:
    """Hold ``location`` (a directory or URI, created if missing) for one writer: a lock
    file names the holder (pid, host, start time). A second writer is refused with that
    name; the lock of a process that is gone (same host, pid not running) is taken over
    with a warning. Released (deleted) on leaving. On the local filesystem the lock file
    is created exclusively (O_EXCL); object stores have no such operation, so there the
    check is read-then-write, and a lock from another host is never presumed stale."""
    fs, root = resolve(location)
    make_directory(fs, root, location)
    path = f"{root}/{LOCK}"
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": what,
        "token": uuid.uuid4().hex,
    }
    _acquire(fs, path, me, location, what)
    try:
        yield
    finally:
        held = read_json(fs, path)
        if held is not None and held.get("token") == me["token"]:  # ours still: release it
            fs.delete_file(path)


def _acquire(fs: pafs.FileSystem, path: str, me: dict, location: str, what: str) -> None:
    data = (json.dumps(me, indent=2) + "\n").encode()
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
    holder = read_json(fs, path)
    if holder is not None and not _gone(holder):
        raise LocationInUse(
            f"{location} is in use by another {holder.get('what', what)} writer: pid {holder.get('pid')} on host "
            f"{holder.get('host')}, since {holder.get('started')} (its lock file {LOCK}; delete it only if that "
            "process is gone)"
        )
    if holder is not None:
        log.warning(
            "%s: taking over the lock of pid %s on %s (since %s), which is no longer running",
            location,
            holder.get("pid"),
            holder.get("host"),
            holder.get("started"),
        )
    write_bytes(fs, path, data)
    if (read_json(fs, path) or {}).get("token") != me["token"]:  # another writer took it at the same moment
        holder = read_json(fs, path) or {}
        raise LocationInUse(f"{location} is in use by another writer: pid {holder.get('pid')} on {holder.get('host')}")


def _gone(holder: dict) -> bool:
    """Whether the lock's process has ended (known only on this host)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False
    return False
