"""How a model from a PEtab problem is observed (SPEC 11, 12): observables that are
formulas of the states under named conditions, noise of a scale that may be an estimated
parameter, normal or Laplace, on a lin / log / log10 scale; and the problem's fixed design.

The stages see one such model as they see a built-in one: channels (``<observable>`` or
``<observable>@<condition>``, one per measured pair), observation sets of
``(t, channel, value)``, and a prediction per observation. What differs is kept here:

- the *noise space*: where the noise is additive (``log10(x)`` for a log10 observable,
  ``x`` for a lin one). Networks, losses, fits and metrics work on observed values and
  predictions mapped there (:meth:`Observation.to_noise_space`); for a built-in model it
  is the identity, and every built-in number stays as it was;
- the noise scale per observation, a function of the parameters (``noise``);
- the NLL per observation: ``r^2 / 2 + log sigma`` (normal) or ``|r| + log sigma``
  (Laplace) with ``r = (x - mu) / sigma`` in the noise space; constants dropped.

A channel's observable and noise placeholders take the overrides of its measurement
nearest in time (exact at the design's points; the measurement table may give each
time its own noise, measured replicates' spreads for example).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import solver as _solver
from ..solver import SolveStatus
from ..solver.dual import Dual

if TYPE_CHECKING:
    from .base import Model


def to_noise_space(transformation: np.ndarray, x):
    """Values (any shape) mapped where their noise is additive, per entry's transformation
    code (0 lin, 1 log, 2 log10); NaN where a log of a value not above 0 is asked for."""
    if isinstance(x, torch.Tensor):
        code = torch.as_tensor(transformation, device=x.device)
        pos = torch.where(x > 0, x, torch.full_like(x, math.nan))
        return torch.where(code == 0, x, torch.where(code == 1, torch.log(pos), torch.log10(pos)))
    arr = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        positive = np.where(arr > 0, arr, np.nan)
        return np.where(transformation == 0, arr, np.where(transformation == 1, np.log(positive), np.log10(positive)))


def from_noise_space(transformation: np.ndarray, y):
    """The inverse of :func:`to_noise_space`."""
    if isinstance(y, torch.Tensor):
        code = torch.as_tensor(transformation, device=y.device)
        return torch.where(code == 0, y, torch.where(code == 1, torch.exp(y), torch.pow(10.0, y)))
    arr = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.where(transformation == 0, arr, np.where(transformation == 1, np.exp(arr), np.power(10.0, arr)))


TRANSFORMATION_CODES = {"lin": 0, "log": 1, "log10": 2}


@dataclass(frozen=True, eq=False)
class Observation:
    """The observation model and fixed design of a problem's model (see the module)."""

    observables: tuple[Any, ...]  # mechinfer.models.petab.Observable, in the problem's order
    condition_inputs: np.ndarray  # (C, K) each condition's input values
    channel_condition: np.ndarray  # (channels,) condition index per channel
    channel_observable: np.ndarray  # (channels,) observable index per channel
    # placeholders per channel, by measurement time: (channels, L) times padded with inf,
    # (channels, L, Q) index into theta (-1: a number) and the number
    placeholder_time: np.ndarray
    placeholder_index: np.ndarray
    placeholder_value: np.ndarray
    n_system_states: int  # states of the system; the model appends time where its rates read it
    design_t: np.ndarray  # (M,) the measurement table's times, sorted
    design_channel: np.ndarray  # (M,) their channels
    conditions: tuple[str, ...] = ()  # the conditions' ids, indexed by channel_condition
    _cache: dict = field(default_factory=dict, repr=False)  # what callers work out once per model (mle)

    # ------------------------------------------------------------ per channel
    @functools.cached_property
    def transformation(self) -> np.ndarray:
        """(channels,) transformation code (0 lin, 1 log, 2 log10)."""
        return np.array(
            [TRANSFORMATION_CODES[self.observables[o].transformation] for o in self.channel_observable], dtype=np.int64
        )

    @functools.cached_property
    def laplace(self) -> np.ndarray:
        """(channels,) whether the channel's noise is Laplace (else normal)."""
        return np.array([self.observables[o].distribution == "laplace" for o in self.channel_observable])

    @functools.cached_property
    def noise_reads_states(self) -> bool:
        return any(self.observables[o].noise_reads_states for o in set(self.channel_observable.tolist()))

    def to_noise_space(self, value, channel):
        return to_noise_space(self.transformation[_indices(channel)], value)

    def from_noise_space(self, y, channel):
        return from_noise_space(self.transformation[_indices(channel)], y)

    # ------------------------------------------------------------ at observation points
    def _placeholders(self, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor):
        """(B, N, Q) placeholder values of each observation (theta (B, P)): its channel's
        measurement nearest in time; and (B, N, Q) the index into theta each takes (-1: a
        number)."""
        times = torch.as_tensor(self.placeholder_time, dtype=t.dtype, device=t.device)[channel]  # (B, N, L)
        nearest = (times - torch.nan_to_num(t)[..., None]).abs().argmin(-1)  # (B, N)
        idx = torch.as_tensor(self.placeholder_index, device=t.device)[channel, nearest]  # (B, N, Q)
        val = torch.as_tensor(self.placeholder_value, dtype=theta.dtype, device=t.device)[channel, nearest]
        if theta.shape[-1] == 0:
            return val, idx
        own = theta[:, None, :].expand(-1, idx.shape[1], -1)
        return torch.where(idx >= 0, torch.gather(own, 2, idx.clamp(min=0)), val), idx

    def _arguments(self, theta: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """The solver's arguments (B, len(conditions), P + K): theta and each condition's inputs."""
        inputs = torch.as_tensor(self.condition_inputs, dtype=theta.dtype, device=theta.device)[conditions]
        return torch.cat(
            [theta[:, None, :].expand(-1, len(conditions), -1), inputs[None].expand(theta.shape[0], -1, -1)], -1
        )

    def predict(
        self,
        model: Model,
        theta: torch.Tensor,
        t: torch.Tensor,
        channel: torch.Tensor,
        *,
        solver: str | None = None,
        **solver_options,
    ):
        """mu (B, N) in the noise space, sigma (B, N) and status (B,) of observations at
        (t, channel) (t inside [0, T], or NaN: padding, predicted at t = 0 and left out of
        the status, since a log-scale observable may have no image there). One solve per
        (row, condition the batch observes), each at the row's times; differentiable in theta."""
        observed = torch.isfinite(t)
        t = torch.where(observed, t, torch.zeros_like(t))
        at, _, point_args, solved = self._states_at(model, theta, t, channel, solver, False, solver_options)
        q, _ = self._placeholders(theta, t, channel)
        h, sigma = self._evaluate(channel.long(), at, point_args, q, theta)
        mu = self.to_noise_space(h, channel)
        return mu, sigma, _status(solved, mu, sigma, observed)

    def predict_jacobian(
        self, model: Model, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor, **solver_options
    ):
        """(mu, d mu / d theta (B, N, P), sigma, d log sigma / d theta (B, N, P), status):
        :meth:`predict`'s values and their Jacobians in theta, from the native solver's
        forward sensitivities (one solve per row and condition, whatever N) and forward
        differentiation through the observable and noise formulas; ``None`` where the
        native solver does not apply (a GPU tensor, the torch backend): differentiate
        :meth:`predict`.

        The formulas run once on :class:`~mechinfer.solver.dual.Dual` numbers: each
        state carries its sensitivities, each parameter (and each placeholder that names
        one) its unit tangent. Why not autograd (each observation its own copy of theta,
        one backward pass per output): on Boehm's 48 measurements its graph and two
        backward passes cost more than the solve with sensitivities itself."""
        theta = theta.detach()
        observed = torch.isfinite(t)
        t = torch.where(observed, t, torch.zeros_like(t))
        found = self._states_at(model, theta, t, channel, None, True, solver_options)
        if found is None:
            return None
        at, d_at, point_args, solved = found
        channel = channel.long()
        q, q_index = self._placeholders(theta, t, channel)
        d_at = d_at[..., : theta.shape[1]]
        h, d_h, sigma, d_sigma = self._evaluate_tangents(channel, at, d_at, point_args, q, q_index)
        mu = self.to_noise_space(h, channel)
        code = torch.as_tensor(self.transformation, device=channel.device)[channel]
        # d mu / d h in the noise space: 1 (lin), 1 / h (log), 1 / (h ln 10) (log10)
        slope = torch.where(code == 0, torch.ones_like(h), 1.0 / torch.where(code == 1, h, h * math.log(10.0)))
        return mu, d_h * slope[..., None], sigma, d_sigma / sigma[..., None], _status(solved, mu, sigma, observed)

    def _evaluate_tangents(self, channel, at, d_at, point_args, q, q_index):
        """h, d h / d theta, sigma, d sigma / d theta ((B, N) and (B, N, P)) from each
        point's states with their sensitivities in theta d_at (B, N, S', P), arguments
        (theta first) and placeholders (``q_index``: the parameter each names, -1: a
        number): :meth:`_evaluate` on Dual numbers."""
        n_p = d_at.shape[-1]
        like = at
        h, sigma = (torch.zeros(channel.shape, dtype=like.dtype) for _ in range(2))
        d_h, d_sigma = (torch.zeros(*channel.shape, n_p, dtype=like.dtype) for _ in range(2))
        eye = torch.eye(n_p, dtype=like.dtype)
        point_observable = torch.as_tensor(self.channel_observable, device=channel.device)[channel]
        for o in torch.unique(point_observable).tolist():
            where = point_observable == o
            n = int(where.sum())
            s_v, s_d = at[where].T.unbind(0), d_at[where].permute(1, 2, 0).unbind(0)  # S' x (n,), (P, n)
            p_v = point_args[where].T.unbind(0)
            p_d = eye[:, :, None].expand(n_p, n_p, n).unbind(0)  # parameter j's tangent: unit (P, n)
            s = [Dual(v, d) for v, d in zip(s_v, s_d, strict=True)]
            p = [Dual(v, p_d[j] if j < n_p else None) for j, v in enumerate(p_v)]
            names = q_index[where]  # (n, Q)
            named = (names >= 0).any(0).tolist()
            q_d = (names.T[:, None, :] == torch.arange(n_p)[None, :, None]).to(like.dtype).unbind(0)  # Q x (P, n)
            qq = [Dual(v, q_d[k] if named[k] else None) for k, v in enumerate(q[where].T.unbind(0))]
            value, sd = self.observables[o].function(s, p, qq)
            for out, d_out, x in ((h, d_h, value), (sigma, d_sigma, sd)):
                out[where] = _full(x.v if isinstance(x, Dual) else x, n, like)
                if isinstance(x, Dual) and x.d is not None:
                    d_out[where] = x.d.expand(n_p, n).T
        return h, d_h, sigma, d_sigma

    def _states_at(self, model, theta, t, channel, solver, jacobian: bool, solver_options: dict):
        """The states at each observation (B, N, S'), time appended where it is not a
        state; with ``jacobian`` their Jacobian in the solver's arguments (B, N, S', P + K)
        from the native solver's sensitivities (else None); each observation's solver
        arguments (B, N, P + K); and the status per (row, condition solved) (B, U). One
        solve per (row, condition the batch observes), each at the sorted times of the
        row's observations under that condition (:func:`_by_condition`), not at all of
        the row's: Schwen's 286 measurements fall under 19 conditions, 15 each on average.
        ``None`` if ``jacobian`` and the native solver does not apply."""
        from .simulate import term

        n_batch, n_points = t.shape
        channel = channel.long()
        point_condition = torch.as_tensor(self.channel_condition, device=channel.device)[channel]  # (B, N)
        used = torch.unique(point_condition)
        slot = torch.full((len(self.condition_inputs),), -1, dtype=torch.long, device=channel.device)
        slot[used] = torch.arange(len(used), device=channel.device)
        point_slot = slot[point_condition]  # (B, N)
        args = self._arguments(theta, used)  # (B, U, P + K)
        t_cond, position = _by_condition(t, point_slot, len(used))  # (B, U, W), (B, N)
        width = t_cond.shape[2]
        flat_args = args.reshape(n_batch * len(used), -1)
        t_flat = t_cond.reshape(n_batch * len(used), width)
        d_states = None
        if jacobian:
            options = {k: v for k, v in solver_options.items() if k != "compile"}
            found = _solver.jacobian(term(model), flat_args, t_flat, **options)
            if found is None:
                return None
            states, d_states, status = found
        else:
            y0 = model.initial_state(flat_args)
            states, status = _solver.solve(
                term(model), y0, flat_args, t_flat, method=solver or model.solver, **solver_options
            )
        flat_index = point_slot * width + position  # (B, N): where each observation's state is

        def at_points(a: torch.Tensor) -> torch.Tensor:  # (B U, W, ...) -> (B, N, ...) per observation
            a = a.to(theta.dtype).reshape(n_batch, len(used) * width, *a.shape[2:])
            tail = a.shape[2:]
            return torch.gather(a, 1, flat_index.reshape(n_batch, n_points, *[1] * len(tail)).expand(-1, -1, *tail))

        at = at_points(states)
        if len(model.states) == self.n_system_states:  # time is not a state: append it
            at = torch.cat([at, t[..., None].to(at.dtype)], -1)
            if d_states is not None:
                d_states = torch.cat([d_states, torch.zeros_like(d_states[:, :, :1])], 2)
        d_at = None if d_states is None else at_points(d_states)
        point_args = torch.gather(args, 1, point_slot[..., None].expand(-1, -1, args.shape[-1]))  # (B, N, P + K)
        return at, d_at, point_args, status.reshape(n_batch, len(used))

    def noise(self, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """sigma (B, N) of observations at (t, channel), without a solve (the noise formulas
        read parameters, placeholders and time only; see :attr:`noise_reads_states`)."""
        if self.noise_reads_states:
            raise ValueError("a noise formula reads model states: its scale needs the solver (Observation.predict)")
        channel = channel.long()
        n_states = self.n_system_states + 1
        at = torch.zeros(*t.shape, n_states, dtype=theta.dtype, device=theta.device)
        at[..., -1] = torch.nan_to_num(t)
        conds = torch.as_tensor(self.channel_condition, device=channel.device)[channel]
        inputs = torch.as_tensor(self.condition_inputs, dtype=theta.dtype, device=theta.device)[conds]  # (B, N, K)
        point_args = torch.cat([theta[:, None, :].expand(-1, t.shape[1], -1), inputs], -1)
        q, _ = self._placeholders(theta, t, channel)
        _, sigma = self._evaluate(channel, at, point_args, q, theta, noise_only=True)
        return sigma

    def _evaluate(self, channel, at, point_args, q, theta, noise_only: bool = False):
        """Observable values h and noise scales (B, N) from each point's states (with time
        last), arguments and placeholders."""
        n_batch = channel.shape[0]
        point_observable = torch.as_tensor(self.channel_observable, device=channel.device)[channel]
        h = torch.zeros(channel.shape, dtype=theta.dtype, device=theta.device)
        sigma = torch.zeros(channel.shape, dtype=theta.dtype, device=theta.device)
        for o in torch.unique(point_observable).tolist():
            where = point_observable == o
            fn = self.observables[o].function
            s, p, qq = at[where].unbind(-1), point_args[where].unbind(-1), q[where].unbind(-1)
            value, sd = fn(s, p, qq)
            n = int(where.sum())
            if not noise_only:
                h = h.masked_scatter(where, _full(value, n, theta))
            sigma = sigma.masked_scatter(where, _full(sd, n, theta))
        del n_batch
        return h, sigma

    def reference_sigma(self, theta: np.ndarray) -> np.ndarray:
        """Each channel's noise scale at ``theta`` (the problem's nominal parameters),
        the median over its measurements' times: the scale networks normalise a channel's
        values by and metrics weigh it with. Where a noise formula reads states, 1."""
        if self.noise_reads_states:
            return np.ones(len(self.channel_condition))
        channels = np.arange(len(self.channel_condition))
        out = []
        with torch.no_grad():
            th = torch.as_tensor(np.atleast_2d(theta), dtype=torch.float64)
            for c in channels:
                times = self.placeholder_time[c][np.isfinite(self.placeholder_time[c])]
                sd = self.noise(th, torch.as_tensor(times)[None], torch.full((1, len(times)), int(c))).numpy()
                ok = sd[np.isfinite(sd) & (sd > 0)]
                out.append(float(np.median(ok)) if len(ok) else 1.0)
        return np.array(out)


def _by_condition(t: torch.Tensor, slot: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's observation times grouped by the condition slot they fall under: t_cond
    (B, U, W), per (row, slot) the sorted times of its observations there, padded at the
    end with their last (0 where it has none), W the largest group; and position (B, N),
    each observation's place in its group (t_cond[b, slot[b, n], position[b, n]] = t[b, n])."""
    n_batch, n_points = t.shape
    by_time = torch.argsort(t, dim=1, stable=True)
    order = torch.gather(by_time, 1, torch.argsort(torch.gather(slot, 1, by_time), dim=1, stable=True))
    slot_sorted, t_sorted = torch.gather(slot, 1, order), torch.gather(t, 1, order)
    counts = torch.zeros(n_batch, n_slots, dtype=torch.long, device=t.device)
    counts.scatter_add_(1, slot_sorted, torch.ones_like(slot_sorted))
    first = torch.cumsum(counts, 1) - counts  # (B, U) where each group starts in sorted order
    rank = torch.arange(n_points, device=t.device)[None] - torch.gather(first, 1, slot_sorted)  # (B, N) sorted
    width = max(int(counts.max()), 1)
    last = torch.zeros(n_batch, n_slots, dtype=t.dtype, device=t.device)
    last.scatter_reduce_(1, slot_sorted, t_sorted, reduce="amax", include_self=False)
    t_cond = last[..., None].expand(-1, -1, width).clone()
    t_cond.view(n_batch, -1).scatter_(1, slot_sorted * width + rank, t_sorted)
    position = torch.empty_like(rank)
    position.scatter_(1, order, rank)
    return t_cond, position


def _status(solved: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """(B,) status of rows whose solves per condition had ``solved`` (B, U): the worst
    solver status, else NONFINITE where an ``observed`` (B, N) entry's prediction or
    noise scale is not finite (or sigma not positive), else OK."""
    ok = (solved == SolveStatus.OK).all(1)
    good = torch.isfinite(mu) & torch.isfinite(sigma) & (sigma > 0)
    finite = (good | ~observed).all(1)
    return torch.where(ok, torch.where(finite, SolveStatus.OK, SolveStatus.NONFINITE), solved.amax(1))


def _indices(channel) -> np.ndarray:
    """Channel indices as a numpy array, from a tensor on any device or an array."""
    if isinstance(channel, torch.Tensor):
        return channel.detach().cpu().numpy()
    return np.asarray(channel)


def _full(x, n: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(like.dtype).expand(n) if x.ndim == 0 else x.to(like.dtype)
    return torch.full((n,), float(x), dtype=like.dtype, device=like.device)


def standard_noise(normal: np.ndarray, laplace: np.ndarray) -> np.ndarray:
    """Unit-scale noise per entry from standard normal draws: kept where the channel's
    noise is normal, mapped through the normal CDF to a unit Laplace draw where it is Laplace."""
    from scipy.special import ndtr

    u = ndtr(normal)
    lap = np.where(u < 0.5, np.log(2 * np.maximum(u, 1e-300)), -np.log(2 * np.maximum(1 - u, 1e-300)))
    return np.where(laplace, lap, normal)


__all__ = ["Observation", "from_noise_space", "standard_noise", "to_noise_space"]
