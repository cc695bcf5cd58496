"""What a mechanistic model declares, and the behaviour every model shares.

A model is data plus one rate-law function (sbi/BayesFlow style): states, observed
channels, inferred quantities with their priors, constants, noise, horizon and design
size. Everything else (prior sampling, the z map, simulation, likelihood) is written once
here and in :mod:`mechinfer.solver`, so a new model is one module and a registration.

The rate laws are written with arithmetic operators and :func:`pos` only, so the one
function runs on torch tensors in the solver (on dual numbers for its Jacobian), and on
numpy arrays in the scipy reference used by the tests.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..arrays import as_tensor, like_input, positive_int
from ..solver import native as _native
from ..solver import symbolic as _symbolic
from ..solver.dual import Dual
from ..solver.dual import value_and_jacobian as dual_value_and_jacobian
from . import priors as _priors
from .design import sample_uniforms
from .simulate import simulate_observed

# Relative slack on the prior bounds when checking user parameters: values produced by
# from_z at |z| ~ 8 sit on a bound up to float round-off.
_BOUND_SLACK = 1e-9


def pos(x):
    """max(x, 0): rate laws read states through it (SPEC 2) so round-off below zero
    cannot blow up a Monod term. Works on torch tensors, numpy arrays and floats."""
    return x.clip(min=0) if hasattr(x, "clip") else max(x, 0.0)


@dataclass(frozen=True)
class Quantity:
    name: str
    prior: _priors.Prior
    unit: str


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    states: tuple[str, ...]
    state_units: tuple[str, ...]
    channels: tuple[str, ...]
    quantities: tuple[Quantity, ...]
    constants: dict[str, float]
    noise_sigma: dict[str, float]
    T: float
    n_obs: int
    # rates(s, p, c) -> dict of d(state)/dt; s, p, c: namespaces of states,
    # inferred quantities and constants.
    rates: Callable
    # initial(p) -> dict of initial states; default: state X starts at quantity X_0.
    initial: Callable | None = None
    # Integration method (see mechinfer.solver.solve): "rodas4" (stiff-capable) or a
    # torchdiffeq method name for non-stiff models.
    solver: str = "rodas4"

    # ---------------------------------------------------------------- declared facts
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.quantities)

    @property
    def parameter_units(self) -> tuple[str, ...]:
        return tuple(q.unit for q in self.quantities)

    @functools.cached_property
    def priors(self) -> tuple[_priors.Prior, ...]:
        # one tuple for the model's life: the z map's constants are cached by its identity
        return tuple(q.prior for q in self.quantities)

    @property
    def sigma(self) -> np.ndarray:
        """Noise sigma per observed channel, in channel order."""
        return np.array([self.noise_sigma[c] for c in self.channels], dtype=np.float64)

    @property
    def n_parameters(self) -> int:
        return len(self.quantities)

    @property
    def channel_states(self) -> tuple[int, ...]:
        return tuple(self.states.index(c) for c in self.channels)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": [{"name": q.name, "unit": q.unit, "prior": q.prior.describe()} for q in self.quantities],
            "channels": [
                {"name": c, "unit": self.state_units[self.states.index(c)], "sigma": self.noise_sigma[c]}
                for c in self.channels
            ],
            "T": self.T,
            "n_obs": self.n_obs,
        }

    # ---------------------------------------------------------------- equations
    def initial_state(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._initial(theta.unbind(-1)), dim=-1)

    def _initial(self, quantities) -> list:
        """The initial states from P quantity values of any kind, in state order."""
        p = _record_type(self.parameter_names)(*quantities)
        init = self.initial(p) if self.initial else {s: getattr(p, f"{s}_0") for s in self.states}
        return [init[s] for s in self.states]

    def rhs(self, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """dy/dt for states y (..., S) and quantities theta (..., P)."""
        return torch.stack(self._derivatives(y.unbind(-1), theta.unbind(-1)), dim=-1)

    def rhs_and_jacobian(self, y: torch.Tensor, theta: torch.Tensor):
        """dy/dt (B, S) and its Jacobian in y (B, S, S), by forward-mode dual numbers."""
        p = [Dual.constant(theta[..., i]) for i in range(self.n_parameters)]
        return dual_value_and_jacobian(self._derivatives(Dual.seed(y), p))

    def _derivatives(self, states, quantities) -> list:
        """The rate laws on S state values and P quantity values of any kind (tensors,
        dual numbers, symbols): the S derivatives, in state order."""
        s = _record_type(self.states)(*states)
        d = self.rates(s, _record_type(self.parameter_names)(*quantities), self._constants())
        return [d[name] for name in self.states]

    def native_system(self) -> _native.NativeSystem:
        """The rate laws compiled for the CPU solver with their exact derivatives: generated
        from ``rates`` itself (symbolic derivatives, :mod:`mechinfer.solver.symbolic`),
        once per machine, and loaded once per process."""
        n_states, n_args = len(self.states), self.n_parameters
        return _native.system(
            self.name,
            self._fingerprint(),
            n_states,
            n_args,
            lambda: _symbolic.source(self._derivatives, n_states, n_args, self._initial),
        )

    def _fingerprint(self) -> str | None:
        """What the generated code depends on: the source of the rate laws and initial
        states, the states, quantities and constants (None when the source cannot be
        read, e.g. a function typed at a prompt). Computed once per model and process:
        reading the source costs a millisecond."""
        key = (self.name, self.rates)
        if key not in _FINGERPRINTS:
            try:
                code = inspect.getsource(self.rates) + (inspect.getsource(self.initial) if self.initial else "")
            except (OSError, TypeError):
                _FINGERPRINTS[key] = None
            else:
                text = repr((code, self.states, self.parameter_names, sorted(self.constants.items())))
                _FINGERPRINTS[key] = hashlib.sha256(text.encode()).hexdigest()
        return _FINGERPRINTS[key]

    def _constants(self):
        return _record_type(tuple(self.constants))(*self.constants.values())

    # ---------------------------------------------------------------- priors, z map
    def sample_prior(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, P) float64 draws in physical units. Row i is the theta of sample_id i of
        a dataset simulated with the same seed (see mechinfer.models.design)."""
        u = sample_uniforms(self, seed, np.arange(positive_int("n", n), dtype=np.int64))["theta"]
        return _priors.from_u(self.priors, torch.from_numpy(u)).numpy()

    def to_z(self, theta):
        t = as_tensor(theta)
        self.check_theta(t, what="to_z")
        return like_input(_priors.to_z(self.priors, t), theta)

    def from_z(self, z):
        # numpy in, numpy all the way (a served answer maps three rows of z per case)
        t = as_tensor(z) if isinstance(z, torch.Tensor) else np.asarray(z, dtype=np.float64)
        if t.shape[-1:] != (self.n_parameters,):
            raise ValueError(
                f"{self.name}: z must have {self.n_parameters} columns "
                f"({', '.join(self.parameter_names)}), got shape {tuple(t.shape)}"
            )
        return _priors.from_z(self.priors, t)

    def check_theta(self, theta: torch.Tensor, what: str = "simulate") -> None:
        """Raise ValueError naming the problem if theta is not (..., P) inside the prior."""
        if theta.ndim == 0 or theta.shape[-1] != self.n_parameters:
            raise ValueError(
                f"{self.name}.{what}: theta must have {self.n_parameters} columns "
                f"({', '.join(self.parameter_names)}), got shape {tuple(theta.shape)}"
            )
        values = theta.detach().reshape(-1, self.n_parameters)
        lo, hi = self._bounds(values)
        # one comparison for all columns (NaN compares false: not inside)
        inside = (values >= lo) & (values <= hi)
        if bool(inside.all()):
            return
        if not torch.isfinite(values).all():
            raise ValueError(f"{self.name}.{what}: theta holds NaN or infinite values")
        i = int((~inside).any(dim=0).nonzero()[0, 0])
        col = values[:, i]
        q = self.quantities[i]
        bad = ~inside[:, i]
        raise ValueError(
            f"{self.name}.{what}: {q.name} = {col[bad][0].item():g} is outside its prior "
            f"{q.prior.describe()} ({int(bad.sum())} value(s) out of range)"
        )

    def _bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior bounds (with their slack) per column, as tensors like ``like``."""
        key = (self.name, self.parameter_names, like.dtype, like.device)
        if key not in _BOUNDS:
            slack = [_BOUND_SLACK * max(abs(q.prior.low), abs(q.prior.high)) for q in self.quantities]
            lo = [q.prior.low - s for q, s in zip(self.quantities, slack)]
            hi = [q.prior.high + s for q, s in zip(self.quantities, slack)]
            _BOUNDS[key] = (
                torch.tensor(lo, dtype=like.dtype, device=like.device),
                torch.tensor(hi, dtype=like.dtype, device=like.device),
            )
        return _BOUNDS[key]

    # ---------------------------------------------------------------- simulation
    def simulate(self, theta, t, *, solver: str | None = None, **options) -> np.ndarray:
        """Noise-free observed channels at times t: theta (B, P), t (B, N) or (N,) ->
        (B, N, C) float64, with NaN rows where the solver failed."""
        theta_t = as_tensor(theta)
        if theta_t.ndim != 2:
            raise ValueError(
                f"{self.name}.simulate: theta must be 2-D (B, {self.n_parameters}), got shape {tuple(theta_t.shape)}"
            )
        y, _ = simulate_observed(self, theta_t, as_tensor(t), solver=solver, **options)
        return y.detach().cpu().numpy()


_RECORD_TYPES: dict[tuple[str, ...], type] = {}
_FINGERPRINTS: dict[tuple, str | None] = {}
_BOUNDS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _record_type(names: tuple[str, ...]):
    """A namedtuple type for attribute access by name (s.X, p.Vmax, c.Kla): cheap to
    build per call, and traceable by torch.compile, unlike SimpleNamespace."""
    if names not in _RECORD_TYPES:
        _RECORD_TYPES[names] = collections.namedtuple("Record", names)
    return _RECORD_TYPES[names]
