"""Continuous batching of many independent minimisations, whatever the iteration.

An optimiser here (:func:`~mechinfer.fit.bfgs.bfgs`, :func:`~mechinfer.fit.trust_region.trust_region`)
advances all of its running problems by one round at a time: one batched evaluation of
the objective at every running problem's trial point, then each problem's own
bookkeeping. What is common to them lives here, once: the queue (a finished problem
leaves and a queued one takes its place, so the batch stays full until the queue is empty
and slow problems do not hold up the rest), the per-problem deadlines, each problem's
share of the wall-clock, and the statuses. The optimisers keep only their iteration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import TypeVar

import numpy as np
import torch


class FitStatus(IntEnum):
    """How one minimisation ended."""

    CONVERGED = 0  # gradient or relative decrease below tolerance
    MAX_ITER = 1  # the iteration limit ran out
    LINE_SEARCH = 2  # no step along the search direction (or inside the trust region) decreased f
    BAD_START = 3  # the start could not be evaluated (a failed solve, say)
    DEADLINE = 4  # the problem's deadline passed; x is the best point found by then


@dataclass
class FitResult:
    x: torch.Tensor  # (B, P) best point
    f: torch.Tensor  # (B,) value there (NaN if the start could not be evaluated)
    iterations: torch.Tensor  # (B,) accepted steps
    evaluations: torch.Tensor  # (B,) objective evaluations (see each optimiser for what one holds)
    status: torch.Tensor  # (B,) FitStatus
    seconds: torch.Tensor  # (B,) the problem's share of the wall-clock: each round's time
    # split evenly over the problems evaluated in it (sums to the total)


@dataclass
class Rows:
    """An optimiser's state of its running problems, one row each, as a dataclass of
    arrays whose first field ``idx`` holds the problems' rows in the whole batch.
    Problems join with :meth:`cat` and leave with :meth:`select`, all fields at once;
    between those, the optimiser's round updates them in place."""

    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    def cat(self: R, other: R) -> R:
        return type(self)(*(np.concatenate([getattr(self, k.name), getattr(other, k.name)]) for k in fields(self)))

    def select(self: R, keep: np.ndarray) -> R:
        return type(self)(*(getattr(self, k.name)[keep] for k in fields(self)))


R = TypeVar("R", bound=Rows)


def run(
    n: int,
    start: Callable[[np.ndarray], R],
    advance: Callable[[R], np.ndarray],
    *,
    max_batch: int | None = None,
    deadline: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run problems 0 .. n-1 to their ends, at most ``max_batch`` (default all) at once,
    taken from the queue in order. ``start(rows)`` gives the state of problems ``rows``
    joining the batch (called inside the round they join, so its cost is theirs);
    ``advance(state)`` runs one round of all running problems (one batched evaluation)
    and returns each one's :class:`FitStatus` or -1 (still running).

    ``deadline`` (n,) float64 wall-clock times (``time.time()``): a problem still running
    when its deadline passes stops with status DEADLINE after the round (the optimiser
    keeps its best point so far), and one still queued by then is never started (status
    DEADLINE; the optimiser's results for it are its start, unevaluated).

    Returns each problem's status (n,) and its share of the wall-clock (n,): each round's
    time split evenly over the problems evaluated in it."""
    max_batch = n if max_batch is None else max(1, int(max_batch))
    status = np.full(n, -1, dtype=np.int64)
    seconds = np.zeros(n)
    running: R | None = None
    queued = 0

    while (running is not None and len(running)) or queued < n:
        tic = time.perf_counter()
        size = 0 if running is None else len(running)
        if deadline is not None and queued < n:  # queued problems already past their deadline
            while queued < n and deadline[queued] < time.time():
                status[queued] = int(FitStatus.DEADLINE)
                queued += 1
            if not size and queued >= n:
                break
        if size < max_batch and queued < n:  # refill from the queue
            new = np.arange(queued, min(n, queued + max_batch - size))
            queued += len(new)
            joining = start(new)
            running = joining if running is None else running.cat(joining)
        assert running is not None
        r = running
        done = advance(r)
        if deadline is not None:
            done = np.where((done < 0) & (deadline[r.idx] < time.time()), int(FitStatus.DEADLINE), done)
        elapsed = time.perf_counter() - tic
        if len(r) == 1:  # one problem (online refinement): scalars, no fancy indexing
            i, d = int(r.idx[0]), int(done[0])
            status[i] = d
            seconds[i] += elapsed
            if d >= 0:
                running = None
            continue
        status[r.idx] = done
        seconds[r.idx] += elapsed / len(r)
        keep = done < 0
        if not keep.all():
            running = r.select(keep)
    return status, seconds
