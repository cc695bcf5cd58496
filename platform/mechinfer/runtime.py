"""Starting or joining Ray, once, the same way for every job and library entry point."""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a Ray cluster address that does not answer (a TCP connect to its host and
    port), in seconds rather than after ray.init's long retries."""
    if not address or address == "auto":
        return
    if address.startswith(("http://", "https://")):
        raise ValueError(
            f"{address} is a job-submission (dashboard) address; the job connects to the "
            "cluster itself: give host:6379 or ray://host:10001, or submit it with "
            f"`ray job submit --address {address} --working-dir . -- python jobs/...`"
        )
    url = urlparse(address if "://" in address else f"ray://{address}")
    host = url.hostname or "127.0.0.1"
    port = url.port or (10001 if url.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"the Ray cluster at {address} does not answer ({host}:{port}: {exc}); "
            "start it (ray start --head / ray up cluster.yaml) or fix --address"
        ) from None


# seconds between an embedded Ray's Ray Train controller's polls of its workers (Ray's
# default: 2): a stage's start and end are noticed sooner
TRAIN_POLL_S = "0.5"


def ensure_ray(address: str | None = None, **init_options) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), or start an embedded Ray, unless this
    process is connected already. Ray Data's progress bars are kept for a terminal and
    turned off in a non-interactive log, where they would repeat every few seconds."""
    import ray

    # Ray Data's newer Parquet reader starts 32 footer-reading actors (processes) for
    # every read it executes, which costs seconds per read on a small machine, and a
    # training epoch executes two (training and validation rows); this platform's
    # datasets are a few large files that the plain reader reads directly
    ray.data.DataContext.get_current().use_datasource_v2 = False
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    check_address(target)
    if not target:  # an embedded Ray: its Ray Train controllers notice a finished stage sooner
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
    ray.init(address=address, **init_options)
    if not sys.stderr.isatty():
        ray.data.DataContext.get_current().enable_progress_bars = False
    log.info("Ray %s: %s", ray.__version__, "connected to " + address if address else "running")


class Progress:
    """Progress of ``total`` units of work: a tqdm bar on a terminal, and in a
    non-interactive log one line per tenth of the work (a bar redrawn into a file is
    unreadable)."""

    def __init__(self, total: int, what: str, unit: str):
        self.total, self.what, self.unit, self.done = total, what, unit, 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit)
        self._next_line = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done >= self._next_line or self.done == self.total:
            log.info("%s: %d of %d %ss done", self.what, self.done, self.total, self.unit)
            self._next_line = self.done + max(1, self.total // 10)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
