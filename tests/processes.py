"""Processes and ports for tests: find Ray processes by their command line (to kill one
in fault tests, or to check none is left), and free TCP ports."""

import shutil
import socket
import sys
from pathlib import Path


def _pids_where(match) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if match((proc / "cmdline").read_bytes()):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def pids_of(title_prefix: bytes) -> list[int]:
    """Process ids whose command line (Ray sets it to the task or actor name, e.g.
    b"ray::MapBatches(...)") starts with ``title_prefix``."""
    return _pids_where(lambda cmdline: cmdline.startswith(title_prefix))


def pids_mentioning(text: str) -> list[int]:
    """Process ids whose command line contains ``text`` anywhere (e.g. a temp dir)."""
    return _pids_where(lambda cmdline: text.encode() in cmdline)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(name: str) -> str | None:
    """A console script (``ray``, ``serve``, ``mechinfer``) of the environment running the
    tests, even when that environment's bin/ is not on PATH (``venv/bin/python -m pytest``)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)
