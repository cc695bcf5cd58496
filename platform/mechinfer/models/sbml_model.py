"""An :class:`~mechinfer.models.odesystem.OdeSystem` as a :class:`Model` the solver runs,
and ``simulate_sbml`` (SPEC 11).

The system's base parameters split into the model's inferred quantities (the solver's
arguments, differentiable) and constants, whose values are substituted into the
expressions before code is generated (a constant costs nothing per step). A system whose
rates read time gets one more state, time itself (rate 1, initial 0): the Rosenbrock
method then integrates an autonomous system, which it does exactly as it would the
non-autonomous one with its time derivative, and every backend (native, torch) needs no
change. The generated equations are keyed by their source text, so two files never
share a compiled module and one file is compiled once per machine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import sympy
import torch

from .. import solver as _solver
from .base import Model, Quantity
from .expressions import compile_function, ieee_xreplace
from .odesystem import TIME, OdeSystem, symbol
from .priors import LogUniform
from .simulate import term

# simulate_sbml's tolerances: the SBML Test Suite asks for 1e-4 relative and absolute
# tolerances down to 1e-10 of the values it lists
SIMULATE_RTOL, SIMULATE_ATOL = 1e-10, 1e-14


def time_state_name(system: OdeSystem) -> str:
    """The name of the time state, one that no id of the system uses."""
    taken = set(system.states) | set(system.parameters) | set(system.outputs)
    name = "time"
    while name in taken:
        name += "_"
    return name


def state_symbols(system: OdeSystem) -> list[sympy.Symbol]:
    """The symbols the model's states bind, in order (time last where the rates read it)."""
    symbols = [symbol(s) for s in system.states]
    return [*symbols, TIME] if system.uses_time else symbols


def model_from_system(
    system: OdeSystem,
    *,
    quantities: Sequence[Quantity],
    channels: Sequence[str] | None = None,
    noise_sigma: dict[str, float] | None = None,
    T: float = 1.0,
    n_obs: int = 20,
    description: str = "",
    constants: dict[str, float] | None = None,
    inputs: Sequence[str] = (),
    observables: Sequence[str] = (),
) -> Model:
    """The system as a Model: ``quantities`` name base parameters (the solver's arguments,
    with their priors), ``inputs`` more of them that a condition sets (arguments after
    the quantities); every other base parameter is a constant at its value in the system,
    or in ``constants``."""
    names = [q.name for q in quantities] + list(inputs)
    unknown = [n for n in names if n not in system.parameters]
    if unknown:
        raise ValueError(f"{system.name}: {', '.join(unknown)} are not parameters of the model")
    values = {**system.parameters, **(constants or {})}
    fixed = {symbol(k): sympy.Float(v, 17) for k, v in values.items() if k not in names}
    states = list(system.states)
    rates = [ieee_xreplace(r, fixed) for r in system.rates]
    initial = [ieee_xreplace(e, fixed) for e in system.initial]
    if system.uses_time:
        states.append(time_state_name(system))
        rates.append(sympy.Float(1.0))
        initial.append(sympy.Float(0.0))
    arguments = [symbol(n) for n in names]
    rate_fn, rate_src = compile_function(
        "rates", {"s": state_symbols(system), "p": arguments, "c": []}, rates, returns=states
    )
    initial_fn, initial_src = compile_function("initial", {"p": arguments}, initial, returns=states)
    key = hashlib.sha256((rate_src + initial_src + repr(states) + repr(names)).encode()).hexdigest()
    channels = tuple(channels) if channels is not None else tuple(system.states)
    return Model(
        name=system.name,
        description=description or f"imported from {system.name}",
        states=tuple(states),
        state_units=tuple(system.units.get(s, "") for s in states),
        channels=channels,
        quantities=tuple(quantities),
        constants={},
        noise_sigma=noise_sigma or dict.fromkeys(channels, 1.0),
        T=float(T),
        n_obs=int(n_obs),
        rates=rate_fn,
        initial=initial_fn,
        solver="rodas4",
        equations_key=key,
        inputs=tuple(inputs),
        observables=tuple(observables),
    )


def default_quantities(system: OdeSystem, factor: float = 10.0) -> list[Quantity]:
    """An SBML file states no priors: its global parameters of positive value become the
    inferred quantities, each log-uniform within ``factor`` of its value (a PEtab
    problem's parameter table states them instead)."""
    return [
        Quantity(name, LogUniform(v / factor, v * factor), system.units.get(name, ""))
        for name, v in system.parameters.items()
        if v > 0 and np.isfinite(v)
    ]


def model_from_sbml(path: str | os.PathLike) -> Model:
    """``load_model`` of an SBML file: every positive global parameter a quantity with a
    log-uniform prior one decade either side of its value, every species state a channel
    with noise sigma 1, the horizon 1 time unit (see :func:`default_quantities`)."""
    from .sbml import read_sbml

    system = read_sbml(path)
    return model_from_system(system, quantities=default_quantities(system))


def scaled_atol(y0: np.ndarray) -> float:
    """SIMULATE_ATOL, times the smallest nonzero |initial value| where that is below 1 (as
    libroadrunner scales its absolute tolerance): a model whose amounts are 1e-12 mol is
    otherwise solved to 1e-14 in absolute terms, 1e-2 of its values (an SBML Test Suite
    case of that scale came out 1.6e-4 off relatively at rtol 1e-10)."""
    values = np.abs(np.asarray(y0, dtype=np.float64))
    values = values[np.isfinite(values) & (values > 0)]
    return SIMULATE_ATOL * float(min(1.0, values.min())) if len(values) else SIMULATE_ATOL


def simulate_sbml(
    path: str | os.PathLike,
    t: Sequence[float],
    variables: Sequence[str],
    amounts: Sequence[str] = (),
    *,
    backend: str = "torch",
    rtol: float = SIMULATE_RTOL,
    atol: float | None = None,
    max_steps: int = 200_000,
) -> np.ndarray:
    """The model of an SBML file at its own parameter values: ``(len(t), len(variables))``
    float64, species as concentrations (as amounts when named in ``amounts``), parameters
    and compartments as their values. Raises UnsupportedModelError for what the importer
    does not simulate exactly (SPEC 11). ``backend="torch"`` needs no compilation (one
    simulation of a file); ``"native"`` compiles the file's equations first. ``atol``:
    default :func:`scaled_atol` of the initial state."""
    from .sbml import read_sbml

    system = read_sbml(path)
    return simulate_system(system, t, variables, amounts, backend=backend, rtol=rtol, atol=atol, max_steps=max_steps)


def simulate_system(
    system: OdeSystem,
    t: Sequence[float],
    variables: Sequence[str],
    amounts: Sequence[str] = (),
    *,
    backend: str = "torch",
    rtol: float = SIMULATE_RTOL,
    atol: float | None = None,
    max_steps: int = 200_000,
) -> np.ndarray:
    times = np.asarray(t, dtype=np.float64).reshape(-1)
    if len(times) == 0 or not np.all(np.isfinite(times)) or (times < 0).any():
        raise ValueError("simulate_sbml: t must be finite, non-negative times")
    n_states = len(system.states)
    if n_states:
        model = model_from_system(system, quantities=(), T=max(float(times.max()), 1e-300))
        order = np.argsort(times, kind="stable")
        args = torch.zeros((1, 0), dtype=torch.float64)
        y0 = model.initial_state(args)
        if atol is None:
            atol = scaled_atol(y0.numpy()[0])
        t_sorted = torch.from_numpy(times[order])[None, :]
        states, status = _solver.solve(
            term(model), y0, args, t_sorted, rtol=rtol, atol=atol, max_steps=max_steps, backend=backend
        )
        if int(status[0]) != 0:
            raise RuntimeError(f"{system.name}: the solver failed ({_solver.SolveStatus(int(status[0])).name})")
        y = states[0].detach().numpy()[np.argsort(order)]  # (N, S), in the order of t
    else:  # nothing to integrate: every variable is a function of the parameters and time
        y = np.zeros((len(times), 0))
    fixed = {symbol(k): sympy.Float(v, 17) for k, v in system.parameters.items()}
    exprs = [ieee_xreplace(system.value(v, amount=v in amounts), fixed) for v in variables]
    fn, _ = compile_function("outputs", {"s": [symbol(s) for s in system.states], "t": [TIME]}, exprs)
    columns = fn([y[:, i] for i in range(n_states)], [times])
    return np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), times.shape) for c in columns], axis=1)
