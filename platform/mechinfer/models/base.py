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
import dataclasses
import functools
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, SupportsIndex

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

if TYPE_CHECKING:
    from .observation import Observation
    from .sources import ModelSource

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
    # For equations generated from a file (mechinfer.models.expressions): a hash of their
    # generated source, which keys the native code cache in place of the rate function's
    # source (a generated function has no source file to read).
    equations_key: str | None = field(default=None, compare=False)
    # Inputs a condition sets, read by the rate laws after the quantities (the solver's
    # arguments are theta followed by a condition's input values); see
    # mechinfer.models.petab.
    inputs: tuple[str, ...] = ()
    # Observables that are formulas of the states (a PEtab problem's), when the model's
    # observations are not its states: mechinfer.models.petab computes them; empty for
    # models whose channels are states.
    observables: tuple[str, ...] = ()
    # How the channels are observed where they are not states with fixed Gaussian noise
    # (a PEtab problem's model: mechinfer.models.observation); None for the others.
    observation: Observation | None = field(default=None, compare=False, repr=False)
    # Where a model from a file came from (mechinfer.models.sources): its files and their
    # hash, set by load_model. None for a built-in model (its source is the package).
    source: ModelSource | None = field(default=None, compare=False, repr=False)

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
    def argument_names(self) -> tuple[str, ...]:
        """What the rate laws read besides the states: the quantities, then the inputs
        a condition sets (a PEtab problem's conditions; none for the built-in models)."""
        return self.parameter_names + self.inputs

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
                {
                    "name": c,
                    "unit": self.state_units[self.states.index(c)] if c in self.states else "",
                    "sigma": self.noise_sigma[c],
                }
                for c in self.channels
            ],
            "T": self.T,
            "n_obs": self.n_obs,
        }

    # ---------------------------------------------------------------- equations
    def initial_state(self, theta: torch.Tensor) -> torch.Tensor:
        return _stack(self._initial(theta.unbind(-1)), theta)

    def _initial(self, quantities) -> list:
        """The initial states from P quantity values of any kind, in state order."""
        p = _record_type(self.argument_names)(*quantities)
        init = self.initial(p) if self.initial else {s: getattr(p, f"{s}_0") for s in self.states}
        return [init[s] for s in self.states]

    def rhs(self, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """dy/dt for states y (..., S) and quantities theta (..., P)."""
        return _stack(self._derivatives(y.unbind(-1), theta.unbind(-1)), y)

    def rhs_and_jacobian(self, y: torch.Tensor, theta: torch.Tensor):
        """dy/dt (B, S) and its Jacobian in y (B, S, S), by forward-mode dual numbers."""
        p = [Dual.constant(theta[..., i]) for i in range(theta.shape[-1])]
        return dual_value_and_jacobian(self._derivatives(Dual.seed(y), p), y)

    def _derivatives(self, states, quantities) -> list:
        """The rate laws on S state values and P quantity values of any kind (tensors,
        dual numbers, symbols): the S derivatives, in state order."""
        s = _record_type(self.states)(*states)
        d = self.rates(s, _record_type(self.argument_names)(*quantities), self._constants())
        return [d[name] for name in self.states]

    def native_system(self) -> _native.NativeSystem:
        """The rate laws compiled for the CPU solver with their exact derivatives: generated
        from ``rates`` itself (symbolic derivatives, :mod:`mechinfer.solver.symbolic`),
        once per machine, and loaded once per process."""
        n_states, n_args = len(self.states), len(self.argument_names)
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
        if self.equations_key is not None:
            return self.equations_key
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
        key = (self.name, self.priors, like.dtype, like.device)  # two files' models may share a name
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

    # ---------------------------------------------------------------- where it comes from
    @property
    def source_hash(self) -> str:
        """The content hash of the model's source files (SPEC 11); for a built-in model, a
        stable hash of its name and the spec version."""
        if self.source is not None:
            return self.source.hash
        from .sources import builtin_hash

        return builtin_hash(self.name)

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple:
        """A model pickles as where it comes from: a model from a file as its source
        (its files, rebuilt by ``source.load()`` on the other side, once per process),
        a built-in one as its name, plus any fields changed since (``dataclasses.replace``).
        So Ray tasks, actors, Train workers and Serve replicas rebuild the same model
        where the user's module is not importable. A model of neither kind pickles by value."""
        if self.source is not None:
            origin: object = self.source
            base = self.source.load()
        else:
            from . import _MODULES, get_model

            if self.name not in _MODULES:
                return super().__reduce_ex__(protocol)
            origin, base = self.name, get_model(self.name)
        changes: dict = {}
        if base is not self:
            for f in dataclasses.fields(self):
                mine, theirs = getattr(self, f.name), getattr(base, f.name)
                if f.name not in ("source", "observation") and mine is not theirs and mine != theirs:
                    changes[f.name] = mine
        return (_rebuild_model, (origin, changes))


def _rebuild_model(origin: str | ModelSource, changes: dict) -> Model:
    """Unpickle a model (see ``Model.__reduce_ex__``): a source or a built-in name, plus changed fields."""
    if isinstance(origin, str):
        from . import get_model

        model = get_model(origin)
    else:
        model = origin.load()
    return dataclasses.replace(model, **changes) if changes else model


def _stack(values: list, like: torch.Tensor) -> torch.Tensor:
    """Stack per-state values into (..., S) like ``like``: a value that does not depend on
    the inputs (a constant rate, an initial value of a file's model) is a float here."""
    shape = like.shape[:-1]
    return torch.stack(
        [
            v.expand(shape)
            if isinstance(v, torch.Tensor)
            else torch.full(shape, float(v), dtype=like.dtype, device=like.device)
            for v in values
        ],
        dim=-1,
    )


_RECORD_TYPES: dict[tuple[str, ...], type] = {}
_FINGERPRINTS: dict[tuple, str | None] = {}
_BOUNDS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _record_type(names: tuple[str, ...]):
    """A namedtuple type for attribute access by name (s.X, p.Vmax, c.Kla): cheap to
    build per call, and traceable by torch.compile, unlike SimpleNamespace. Names that are
    not Python identifiers (an SBML id such as ``lambda``) are renamed; generated rate
    functions read records by position."""
    if names not in _RECORD_TYPES:
        _RECORD_TYPES[names] = collections.namedtuple("Record", names, rename=True)
    return _RECORD_TYPES[names]
