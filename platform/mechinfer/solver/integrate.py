"""The batched integration loop: every sample has its own time, step size and
observation times, and leaves the batch as soon as its last observation is reached.

Steps are clipped to land exactly on each sample's next observation time, so outputs are
the method's own solution points (no interpolation error). Step sizes are decisions, not
functions of the parameters: they are detached, and gradients are those of the discrete
solution along the chosen steps.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields

import torch

from .controller import IController
from .status import SolveStatus


@dataclass
class _Solving:
    """The samples still being integrated, one row each: their rows of the batch
    (``idx``), state, parameters, observation times, time, index of the next observation,
    steps taken and next step size. Samples leave with :meth:`select`, all fields at once."""

    idx: torch.Tensor
    y: torch.Tensor
    args: torch.Tensor
    times: torch.Tensor
    t: torch.Tensor
    k: torch.Tensor
    steps: torch.Tensor
    h: torch.Tensor

    def __len__(self) -> int:
        return self.idx.numel()

    def select(self, keep: torch.Tensor) -> _Solving:
        return _Solving(*(getattr(self, f.name)[keep] for f in fields(self)))


def integrate(
    term,
    method,
    controller: IController,
    y0: torch.Tensor,
    args: torch.Tensor,
    t_obs: torch.Tensor,
    *,
    max_steps: int = 20_000,
    min_step: float = 1e-12,
    compile: bool | None = None,
):
    """Solve y' = term(y, args) from t = 0 for each sample and return its states at its
    own sorted observation times.

    y0 (B, S), args (B, P), t_obs (B, N) sorted ascending, non-negative.
    Returns states (B, N, S) (NaN rows for failed samples) and status (B,) int8:
    a :class:`SolveStatus` per sample.

    ``compile``: run each step as one torch.compile'd graph (3-4x faster per step; the
    first use in a process costs a compilation, cached on disk after). ``None`` compiles
    for batches of at least ``COMPILE_MIN_BATCH`` samples, where it pays back, unless the
    environment sets ``MECHINFER_COMPILE=0``.
    """
    n_batch, n_obs = t_obs.shape
    n_states = y0.shape[-1]
    if compile is None:
        compile = n_batch >= COMPILE_MIN_BATCH and os.environ.get("MECHINFER_COMPILE", "1") != "0"
    step = _Stepper(method, term, compile)
    device, dtype = y0.device, y0.dtype
    t_obs = t_obs.detach().to(dtype)
    status = torch.zeros(n_batch, dtype=torch.int8, device=device)
    positions: list[torch.Tensor] = []
    values: list[torch.Tensor] = []

    with torch.no_grad():
        h = controller.initial_step(y0.detach(), term(y0.detach(), args.detach()), method.order)
    zeros = torch.zeros(n_batch, dtype=torch.long, device=device)
    s = _Solving(
        idx=torch.arange(n_batch, device=device),
        y=y0,
        args=args,
        times=t_obs,
        t=torch.zeros(n_batch, dtype=dtype, device=device),
        k=zeros,
        steps=zeros.clone(),
        h=torch.minimum(h.clamp(min=FIRST_STEP_FLOOR * min_step), t_obs[:, -1].clamp(min=min_step)),
    )

    def record(s: _Solving) -> None:
        """Store the states of every sample that has reached its next observation time."""
        while True:
            next_time = s.times.gather(1, s.k.clamp(max=n_obs - 1)[:, None])[:, 0]
            hit = (s.k < n_obs) & (next_time <= s.t)
            if not hit.any():
                return
            rows = hit.nonzero()[:, 0]
            positions.append(s.idx[rows] * n_obs + s.k[rows])
            values.append(s.y[rows])
            s.k = s.k + hit.long()

    record(s)
    while len(s):
        keep = (s.k < n_obs) & (s.steps < max_steps) & (s.h >= min_step)
        status[s.idx[(s.k < n_obs) & (s.steps >= max_steps)]] = SolveStatus.MAX_STEPS
        status[s.idx[(s.k < n_obs) & (s.steps < max_steps) & (s.h < min_step)]] = SolveStatus.STEP_UNDERFLOW
        if not keep.all():
            s = s.select(keep)
            if not len(s):
                break

        target = s.times.gather(1, s.k[:, None])[:, 0]
        gap = target - s.t
        landed = s.h >= gap
        h_step = torch.minimum(s.h, gap)
        y_new, err = _safe_step(step, s.y, s.args, h_step)
        with torch.no_grad():
            norm = controller.error_norm(s.y.detach(), y_new.detach(), err.detach())
            accepted = norm <= 1.0
            h_next = h_step * controller.factor(norm, method.order)
            s.h = torch.where(accepted & landed, torch.maximum(s.h, h_next), h_next)
            s.t = torch.where(accepted, torch.where(landed, target, s.t + h_step), s.t)
        s.y = torch.where(accepted[:, None], y_new, s.y)
        s.steps = s.steps + 1
        record(s)

    out = torch.zeros(n_batch * n_obs, n_states, dtype=dtype, device=device)
    if positions:
        out = out.index_put((torch.cat(positions),), torch.cat(values))
    out = out.reshape(n_batch, n_obs, n_states)
    failed = (status != SolveStatus.OK)[:, None, None]
    return torch.where(failed, torch.full_like(out, torch.nan), out), status


COMPILE_MIN_BATCH = 1024
# The first step is at least this many times ``min_step``. Why: Hairer's starting step
# (:meth:`~.controller.IController.initial_step`) divides the scaled state by its scaled
# derivative, and a state fed fast beside a large one makes it tiny: an inflow of 1e8 a day
# into a state at 0 with atol 1e-10 gave 5e-13, and 159 of 512 prior draws of Fujita's
# model had 1e-15 to 1e-13, below the smallest step, so the solve failed before its first
# step. The method is L-stable and its error control shrinks a step it cannot take (five
# times, to 1e-12 here), so a first step of 1e-11 costs nothing where a smaller one was
# needed; from it all 512 draws solve (at rtol 1e-6, atol 1e-8).
FIRST_STEP_FLOOR = 10.0
_COMPILED: dict = {}


class _Stepper:
    """Takes a step with ``method.step(term, ...)``, compiled or not. Compiled steps are
    cached per (method, equations) so each process compiles once; a batch of one runs
    eagerly (torch.compile specialises size 1 and would compile again); a compiler
    failure (no C++ toolchain, say) falls back to eager with a warning."""

    def __init__(self, method, term, compile: bool):
        self.method, self.term = method, term
        self.compiled = _compiled_step(method, term) if compile else None

    def __call__(self, y, a, h):
        if self.compiled is not None and y.shape[0] > 1:
            try:
                return self.compiled(y, a, h)
            except Exception as exc:
                warnings.warn(f"torch.compile failed, solving eagerly: {exc}", RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.method.step(self.term, y, a, h)


def _compiled_step(method, term):
    key = (type(method), term.f, term.jacobian)
    if key not in _COMPILED:

        def step(y, a, h, _method=method, _term=term):
            return _method.step(_term, y, a, h)

        _COMPILED[key] = torch.compile(step, dynamic=True)
    return _COMPILED[key]


def _safe_step(step, y, a, h):
    """One step for every row. When gradients are being recorded and a row's trial step
    overflows, that row is re-taken without a graph: a rejected non-finite step would
    otherwise turn the row's whole gradient into NaN (0 * inf in the backward pass)."""
    y_new, err = step(y, a, h)
    if not torch.is_grad_enabled() or not (y.requires_grad or a.requires_grad):
        return y_new, err
    finite = torch.isfinite(y_new).all(dim=-1) & torch.isfinite(err).all(dim=-1)
    if finite.all():
        return y_new, err
    rows = finite.nonzero()[:, 0]
    y_good, err_good = step(y[rows], a[rows], h[rows])
    y_new = torch.full_like(y, torch.nan).index_put((rows,), y_good)
    err = torch.full_like(y, torch.nan).index_put((rows,), err_good)
    return y_new, err
