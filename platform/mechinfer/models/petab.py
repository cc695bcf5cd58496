"""PEtab v1 problems (SPEC 11): an SBML model, conditions, observables with their noise,
measurements and the parameter table, as a :class:`Model` and a log-likelihood.

The ``petab`` library reads and validates the tables; the SBML file goes through
:func:`mechinfer.models.sbml.read_sbml`. How the pieces map:

- the estimated parameters (``estimate = 1``, in the table's order) are the model's
  quantities, with priors uniform on their parameterScale within the bounds;
- fixed parameters are constants at their nominal values;
- a condition sets model parameters, compartment sizes and species' initial values to
  numbers or to parameters. One compiled system serves every condition: each overridden
  target becomes ``c + sum_j s_j theta_j`` with per-condition *inputs* c and s_j (the
  solver's arguments are theta followed by a condition's inputs), which is exact and keeps
  the derivatives in theta exact;
- observables and noise formulas are compiled like the rate laws; observable and noise
  parameter placeholders take each measurement's overrides (a number or a parameter);
- the log-likelihood sums, per measurement, the normal or Laplace density of the
  (lin / log / log10) transformed value, normalisation constants and the
  transformation's Jacobian included, as PEtab and AMICI define it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import numpy as np
import pandas as pd
import sympy
import torch

from .. import solver as _solver
from ..solver import SolveStatus
from .base import Model, Quantity
from .expressions import compile_function
from .observation import Observation
from .odesystem import TIME, ModelSourceError, OdeSystem, UnsupportedModelError, symbol
from .priors import LogUniform, Prior, Truncated, Uniform
from .sbml_model import model_from_system
from .simulate import term

TRANSFORMATIONS = ("lin", "log", "log10")
DISTRIBUTIONS = ("normal", "laplace")
_PLACEHOLDER = re.compile(r"^(observable|noise)Parameter(\d+)_(.+)$")


@dataclass(frozen=True)
class Observable:
    """One observable: its compiled formula and noise, with how it is measured."""

    name: str
    formula: str
    noise_formula: str
    transformation: str
    distribution: str
    n_observable_parameters: int
    n_noise_parameters: int
    function: Any  # (s, p, q) -> [value, sigma]; s: states and time, p: arguments, q: placeholders
    noise_reads_states: bool = False  # the noise formula reads model states (not only parameters and time)


@dataclass
class PetabProblem:
    """A PEtab problem as a model and its measurements (SPEC 11)."""

    name: str
    model: Model
    design: pd.DataFrame  # condition, observable, time: the measurement table's points
    measurements: pd.DataFrame  # experiment, t, channel, value (SPEC 10 columns)
    nominal: np.ndarray  # (P,) nominal values of the estimated parameters, physical units
    conditions: tuple[str, ...]
    observables: tuple[Observable, ...]
    condition_inputs: np.ndarray  # (C, K): each condition's input values
    # per measurement
    m_condition: np.ndarray  # (M,) condition index
    m_observable: np.ndarray  # (M,) observable index
    m_time: np.ndarray  # (M,)
    m_value: np.ndarray  # (M,)
    m_placeholder_index: np.ndarray  # (M, Q) index into theta, -1 for a number
    m_placeholder_value: np.ndarray  # (M, Q) the number where the index is -1
    n_system_states: int  # the SBML model's states (the model appends time where its rates read it)

    # ------------------------------------------------------------ likelihood
    def log_likelihood(self, theta=None, *, backend: str = "auto", **tolerances) -> float | np.ndarray:
        """The PEtab log-likelihood of the measurements at theta (physical units; (P,) ->
        float, (B, P) -> (B,)), at the nominal parameters when None. NaN where a solve
        failed. ``tolerances``: the solver's rtol, atol, max_steps (default: rtol 1e-8,
        atol 1e-10)."""
        th = self.nominal if theta is None else np.asarray(theta, dtype=np.float64)
        single = th.ndim == 1
        with torch.no_grad():
            theta_t = torch.as_tensor(np.atleast_2d(th), dtype=torch.float64)
            ll = self.log_likelihood_tensor(theta_t, backend=backend, **tolerances)
        out = ll.numpy()
        return float(out[0]) if single else out

    def nll_and_gradient(self, theta, *, backend: str = "auto", **tolerances) -> tuple[np.ndarray, np.ndarray]:
        """-log-likelihood (B,) and its exact gradient in theta (B, P), physical units: the
        native solver's discrete adjoint (or autograd through the torch steps) under
        autograd through the observation model."""
        th = torch.as_tensor(np.atleast_2d(np.asarray(theta, dtype=np.float64))).clone().requires_grad_(True)
        nll = -self.log_likelihood_tensor(th, backend=backend, **tolerances)
        (grad,) = torch.autograd.grad(nll.sum(), th)
        return nll.detach().numpy(), grad.numpy()

    def backend(self, backend: str = "auto") -> str:
        """``auto``: the native solver once this problem's equations are compiled on this
        machine (:meth:`compile`, or an earlier run), else the torch steps, which need no
        compilation (a one-off log-likelihood of a large model: seconds, against minutes
        of compiling). ``native`` or ``torch`` as asked."""
        if backend != "auto":
            return backend
        from ..solver import native

        usable = native.available() and native.is_built(self.model.name, self.model._fingerprint())
        return "native" if usable else "torch"

    def compile(self) -> None:
        """Generate and compile the native code of the problem's equations (once per
        machine; repeated evaluations, gradients and fits then take the native solver):
        one solve and one gradient at the nominal point compile what they use."""
        self.nll_and_gradient(self.nominal, backend="native")

    def condition_arguments(self, theta: torch.Tensor) -> torch.Tensor:
        """The solver's arguments of every (theta row, condition): (B, C, P + K)."""
        n_batch, n_cond = theta.shape[0], len(self.conditions)
        inputs = torch.as_tensor(self.condition_inputs, dtype=theta.dtype)
        return torch.cat([theta[:, None, :].expand(n_batch, n_cond, -1), inputs[None].expand(n_batch, -1, -1)], -1)

    def solve_conditions(self, theta: torch.Tensor, *, backend: str = "auto", **tolerances):
        """States at each condition's measurement times (the first output of
        :meth:`condition_times`) for every theta row: (B, C, N, S) and status (B, C);
        differentiable in theta."""
        n_batch, n_cond = theta.shape[0], len(self.conditions)
        args = self.condition_arguments(theta).reshape(n_batch * n_cond, -1)
        times, _ = self.condition_times()
        t_obs = torch.as_tensor(times, dtype=theta.dtype)[None].expand(n_batch, -1, -1).reshape(n_batch * n_cond, -1)
        y0 = self.model.initial_state(args)
        options = {**self._tolerances, **tolerances}
        states, status = _solver.solve(term(self.model), y0, args, t_obs, backend=self.backend(backend), **options)
        return states.reshape(n_batch, n_cond, times.shape[1], -1), status.reshape(n_batch, n_cond)

    def simulate_measurements(self, theta: torch.Tensor, *, backend: str = "auto", **tolerances):
        """Observable values (B, M) and noise scales (B, M) of every measurement, and
        whether every condition of a theta row solved (B,)."""
        n_batch = theta.shape[0]
        _, column = self.condition_times()
        states, status = self.solve_conditions(theta, backend=backend, **tolerances)
        ok = (status == SolveStatus.OK).all(dim=1)
        args = self.condition_arguments(theta)
        # states at each measurement (B, M, S), time as the last column for the observables
        at = states[:, torch.as_tensor(self.m_condition), torch.as_tensor(column)]
        if len(self.model.states) == self.n_system_states:  # time is not a state: append it
            at = torch.cat([at, torch.tensor(self.m_time, dtype=theta.dtype)[None, :, None].expand(n_batch, -1, 1)], -1)
        m_args = args[:, torch.as_tensor(self.m_condition)]  # (B, M, P + K)
        idx = torch.as_tensor(self.m_placeholder_index)
        q = torch.where(
            idx >= 0,
            theta[:, idx.clamp(min=0)] if theta.shape[1] else torch.zeros(n_batch, *idx.shape, dtype=theta.dtype),
            torch.as_tensor(self.m_placeholder_value, dtype=theta.dtype),
        )  # (B, M, Q)
        value = torch.empty(n_batch, len(self.m_time), dtype=theta.dtype)
        sigma = torch.empty_like(value)
        for obs, rows in self._observable_rows:
            s = at[:, rows].unbind(-1)
            p = m_args[:, rows].unbind(-1)
            qq = q[:, rows].unbind(-1)
            h, sd = obs.function(s, p, qq)
            value = value.index_copy(1, rows, _full(h, (n_batch, len(rows)), theta))
            sigma = sigma.index_copy(1, rows, _full(sd, (n_batch, len(rows)), theta))
        return value, sigma, ok

    def log_likelihood_tensor(self, theta: torch.Tensor, *, backend: str = "auto", **tolerances) -> torch.Tensor:
        """log-likelihood (B,) of theta (B, P), differentiable."""
        value, sigma, ok = self.simulate_measurements(theta, backend=backend, **tolerances)
        x = torch.tensor(self.m_value, dtype=theta.dtype)
        ll = torch.zeros_like(value)
        for obs, rows in self._observable_rows:
            ll = ll.index_copy(1, rows, _log_density(obs, x[rows], value[:, rows], sigma[:, rows]))
        total = ll.sum(dim=1)
        return torch.where(ok, total, torch.full_like(total, math.nan))

    # ------------------------------------------------------------ helpers
    # tighter than the solver's defaults: the log-likelihood is compared with published
    # values to 0.01, and measurement-level values reach 1e-8 of their scale
    _tolerances: ClassVar[dict] = {"rtol": 1e-8, "atol": 1e-10, "max_steps": 100_000}

    def condition_times(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct measurement times per condition, padded with its last time
        ((C, N)), and each measurement's column in them (M,)."""
        return self._time_grid

    @functools.cached_property
    def _time_grid(self) -> tuple[np.ndarray, np.ndarray]:
        # the design is fixed: worked out once, not at every evaluation of a fit
        per = [np.unique(self.m_time[self.m_condition == c]) for c in range(len(self.conditions))]
        width = max(len(p) for p in per)
        times = np.stack([np.pad(p, (0, width - len(p)), mode="edge") if len(p) else np.zeros(width) for p in per])
        column = np.array([np.searchsorted(per[c], t) for c, t in zip(self.m_condition, self.m_time)])
        return times, column

    @functools.cached_property
    def _observable_rows(self) -> list[tuple[Observable, torch.Tensor]]:
        """Each observable that has measurements, with their rows."""
        rows = [
            (obs, torch.as_tensor(np.flatnonzero(self.m_observable == o))) for o, obs in enumerate(self.observables)
        ]
        return [(obs, r) for obs, r in rows if len(r)]


def _full(x, shape, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.expand(shape)
    return torch.full(shape, float(x), dtype=like.dtype)


def _log_density(obs: Observable, x: torch.Tensor, h: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log p(x | h, sigma) per measurement, with the transformation's Jacobian."""
    if obs.transformation == "lin":
        r, jac = x - h, torch.zeros_like(x)
    elif obs.transformation == "log":
        r, jac = torch.log(x) - torch.log(h), -torch.log(x)
    else:
        r, jac = torch.log10(x) - torch.log10(h), -torch.log(x * math.log(10.0))
    if obs.distribution == "normal":
        return -0.5 * torch.log(2 * math.pi * sigma * sigma) - 0.5 * (r / sigma) ** 2 + jac
    return -torch.log(2 * sigma) - torch.abs(r) / sigma + jac


# ---------------------------------------------------------------- import
# PEtab v1's objectivePriorType values: (distribution, whether it acts on the
# parameterScale rather than on the linear value, whether it acts on ln x)
PRIOR_TYPES = {
    "parameterScaleUniform": ("uniform", True, False),
    "parameterScaleNormal": ("normal", True, False),
    "parameterScaleLaplace": ("laplace", True, False),
    "uniform": ("uniform", False, False),
    "normal": ("normal", False, False),
    "laplace": ("laplace", False, False),
    "logNormal": ("normal", False, True),
    "logLaplace": ("laplace", False, True),
}


def _prior(pid: str, scale: str, low: float, high: float, where: str, prior_type=None, prior_parameters=None) -> Prior:
    """A parameter's prior: its objectivePriorType (with objectivePriorParameters)
    truncated to its bounds, as the petab library truncates objective priors (a uniform
    prior's interval intersected with them); uniform on its parameterScale between the
    bounds where the table gives none (SPEC 11)."""
    what = f"{where}: parameter {pid}"
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ModelSourceError(f"{what}: bounds must be finite, got [{low:g}, {high:g}]")
    if low >= high:
        raise ModelSourceError(f"{what}: lowerBound {low:g} >= upperBound {high:g}")
    if scale not in ("lin", "log", "log10"):
        raise ModelSourceError(f"{what}: unknown parameterScale {scale!r}")
    if scale != "lin" and low <= 0:
        raise ModelSourceError(f"{what}: lowerBound {low:g} must be > 0 on {scale} scale")
    if _empty_cell(prior_type):
        return Uniform(float(low), float(high)) if scale == "lin" else LogUniform(float(low), float(high))
    kind, on_scale, on_log = _prior_kind(str(prior_type).strip(), what)
    if kind == "uniform" and _empty_cell(prior_parameters):  # the bounds, as the petab library takes them
        if on_scale and scale != "lin":
            return LogUniform(float(low), float(high))
        return Uniform(float(low), float(high))
    a, b = _prior_parameters(prior_parameters, str(prior_type).strip(), what)
    log = on_log or (on_scale and scale != "lin")
    if on_scale and scale == "log10":  # a, b on log10 x: in ln x, as the prior's w
        a, b = a * math.log(10.0), b * math.log(10.0)
    try:
        if kind == "uniform":
            if log:  # uniform in ln x between e^a and e^b, within the bounds
                lo, hi = max(low, math.exp(a)), min(high, math.exp(b))
                return LogUniform(lo, hi) if lo < hi else _empty(what, prior_type, a, b)
            lo, hi = max(low, a), min(high, b)
            return Uniform(lo, hi) if lo < hi else _empty(what, prior_type, a, b)
        return Truncated(kind, a, b, float(low), float(high), log=log)
    except ValueError as e:
        raise ModelSourceError(f"{what}: objectivePriorType {prior_type}: {e}") from None


def _prior_kind(prior_type: str, what: str) -> tuple[str, bool, bool]:
    if prior_type not in PRIOR_TYPES:
        raise ModelSourceError(
            f"{what}: unknown objectivePriorType {prior_type!r}; PEtab v1's are {', '.join(PRIOR_TYPES)}"
        )
    return PRIOR_TYPES[prior_type]


def _empty_cell(cell) -> bool:
    return cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() == ""


def _prior_parameters(cell, prior_type: str, what: str) -> tuple[float, float]:
    """objectivePriorParameters: two numbers separated by ';'."""
    parts = [] if _empty_cell(cell) else str(cell).split(";")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 2 or not all(np.isfinite(values)):
        raise ModelSourceError(
            f"{what}: objectivePriorType {prior_type} needs objectivePriorParameters as two finite numbers "
            f"'a;b', got {cell!r}"
        )
    if prior_type not in ("uniform", "parameterScaleUniform") and not values[1] > 0:
        raise ModelSourceError(f"{what}: objectivePriorType {prior_type} needs a scale > 0, got {values[1]:g}")
    return values[0], values[1]


def _empty(what: str, prior_type, a: float, b: float) -> NoReturn:
    raise ModelSourceError(f"{what}: objectivePriorType {prior_type} ({a:g}; {b:g}) leaves nothing within the bounds")


def _is_number(v) -> bool:
    if isinstance(v, int | float | np.integer | np.floating):
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _overrides(cell) -> list:
    """A measurement's observableParameters / noiseParameters cell as a list of numbers
    and parameter ids."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if _is_number(cell):
        return [float(cell)]
    return [float(p) if _is_number(p) else p.strip() for p in str(cell).split(";") if p.strip()]


def load_petab(path: str | os.PathLike) -> PetabProblem:
    """A PEtab v1 problem from its YAML file (SPEC 11)."""
    import petab.v1 as petab1

    from .sbml import read_sbml

    path = os.fspath(path)
    where = os.path.basename(path)
    if not os.path.isfile(path):
        raise ModelSourceError(f"{path}: no such PEtab problem file")
    import yaml

    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
        # without its visualization tables: plot specifications change no number, and a
        # YAML may name one that was never published
        for entry in spec.get("problems") or []:
            entry.pop("visualization_files", None)
        problem = petab1.Problem.from_yaml(spec, base_path=os.path.dirname(os.path.abspath(path)))
    except FileNotFoundError as e:
        raise ModelSourceError(f"{where}: a table it names is missing: {e.filename or e}") from None
    except Exception as e:
        raise ModelSourceError(f"{where}: not a readable PEtab v1 problem: {e}") from None
    for table in ("condition_df", "measurement_df", "observable_df", "parameter_df"):
        if getattr(problem, table) is None:
            raise ModelSourceError(f"{where}: the problem has no {table.split('_')[0]} table")
    sbml_files = [f for p in spec.get("problems", []) for f in p.get("sbml_files", [])]
    if len(sbml_files) != 1:
        raise UnsupportedModelError(f"{where}: a problem with {len(sbml_files)} SBML files (one is supported)")
    system = read_sbml(os.path.join(os.path.dirname(path), sbml_files[0]))
    name = os.path.splitext(where)[0]
    return _build(name, where, system, problem)


def _build(name: str, where: str, system: OdeSystem, problem) -> PetabProblem:
    par: pd.DataFrame = problem.parameter_df
    meas: pd.DataFrame = problem.measurement_df
    pre = meas["preequilibrationConditionId"] if "preequilibrationConditionId" in meas.columns else None
    if pre is not None and (pre.notna() & (pre.astype(str).str.strip() != "")).any():
        raise UnsupportedModelError(f"{where}: preequilibration (measurement table preequilibrationConditionId)")
    estimated = [str(pid) for pid in par.index if int(par.loc[pid, "estimate"]) == 1]
    fixed = {str(pid): float(par.loc[pid, "nominalValue"]) for pid in par.index if int(par.loc[pid, "estimate"]) != 1}
    quantities = [
        Quantity(
            pid,
            _prior(
                pid,
                str(par.loc[pid, "parameterScale"]),
                float(par.loc[pid, "lowerBound"]),
                float(par.loc[pid, "upperBound"]),
                where,
                par.loc[pid, "objectivePriorType"] if "objectivePriorType" in par.columns else None,
                par.loc[pid, "objectivePriorParameters"] if "objectivePriorParameters" in par.columns else None,
            ),
            "",
        )
        for pid in estimated
    ]
    nominal = np.array([float(par.loc[pid, "nominalValue"]) for pid in estimated])
    theta_index = {pid: j for j, pid in enumerate(estimated)}

    def resolve(v, what: str):
        """A table cell: ('number', x) or ('theta', j)."""
        if _is_number(v):
            return ("number", float(v))
        v = str(v).strip()
        if v in theta_index:
            return ("theta", theta_index[v])
        if v in fixed:
            return ("number", fixed[v])
        if v in system.parameters:
            return ("number", float(system.parameters[v]))
        raise ModelSourceError(f"{where}: {what}: unknown parameter {v!r}")

    # -------------------------------------------------------- conditions -> inputs
    cond: pd.DataFrame = problem.condition_df
    used = list(dict.fromkeys(meas["simulationConditionId"].astype(str)))
    conditions = tuple(used)
    missing = [c for c in conditions if c not in cond.index]
    if missing:
        raise ModelSourceError(
            f"{where}: condition {missing[0]!r} of the measurement table is not in the condition table"
        )
    inputs: list[str] = []
    columns: dict[str, list[float]] = {}

    def add_input(label: str, values: list[float]) -> sympy.Symbol:
        inputs.append(label)
        columns[label] = values
        return symbol(label)

    base_value: dict[str, sympy.Expr] = {}
    for pid in system.parameters:
        if pid in theta_index:
            base_value[pid] = symbol(pid)
        elif pid in fixed:
            base_value[pid] = sympy.Float(fixed[pid], 17)
        else:
            base_value[pid] = sympy.Float(system.parameters[pid], 17)
    substitutions: dict[sympy.Symbol, sympy.Expr] = {}
    initial_override: dict[int, sympy.Expr] = {}
    for target in [c for c in cond.columns if c != "conditionName"]:
        cells = [cond.loc[c, target] for c in conditions]
        is_state = target in system.states
        if not is_state and target not in system.parameters:
            raise ModelSourceError(
                f"{where}: condition table column {target!r} is not a parameter, compartment or species state"
            )
        resolved = [
            None if (not isinstance(v, str) and pd.isna(v)) else resolve(v, f"condition column {target}") for v in cells
        ]
        thetas = sorted({r[1] for r in resolved if r is not None and r[0] == "theta"})
        number = [r[1] if r is not None and r[0] == "number" else 0.0 for r in resolved]
        expr: sympy.Expr = add_input(f"{target}__value", number)
        for j in thetas:
            sel = [1.0 if r == ("theta", j) else 0.0 for r in resolved]
            expr = expr + add_input(f"{target}__{estimated[j]}", sel) * symbol(estimated[j])
        keep = [1.0 if r is None else 0.0 for r in resolved]
        if is_state:
            i = system.states.index(target)
            if any(keep):
                expr = expr + add_input(f"{target}__keep", keep) * system.initial[i]
            initial_override[i] = expr
        else:
            if any(keep):
                expr = expr + add_input(f"{target}__keep", keep) * base_value[target]
            substitutions[symbol(target)] = expr
    for pid, value in base_value.items():
        substitutions.setdefault(symbol(pid), value)

    rates = tuple(r.xreplace(substitutions) for r in system.rates)
    initial = tuple(
        initial_override[i].xreplace(substitutions) if i in initial_override else e.xreplace(substitutions)
        for i, e in enumerate(system.initial)
    )
    # the rates and initial values now read theta and the inputs only: rebuild the system
    # with them as its base parameters (their values do not matter: all are arguments)
    resolved_system = OdeSystem(
        name=name,
        states=system.states,
        rates=rates,
        initial=initial,
        parameters={**{pid: float(v) for pid, v in zip(estimated, nominal)}, **dict.fromkeys(inputs, 0.0)},
        outputs=system.outputs,
        concentrations=system.concentrations,
        amounts=system.amounts,
        units=system.units,
    )
    # -------------------------------------------------------- observables
    obs_df: pd.DataFrame = problem.observable_df
    observables = []
    arg_symbols = [symbol(p) for p in (*estimated, *inputs)]
    s_symbols = [symbol(s) for s in system.states] + [TIME]
    for oid in obs_df.index:
        row = obs_df.loc[oid]
        transformation = str(row.get("observableTransformation", "lin") or "lin")
        transformation = "lin" if transformation == "nan" else transformation
        distribution = str(row.get("noiseDistribution", "normal") or "normal")
        distribution = "normal" if distribution == "nan" else distribution
        if transformation not in TRANSFORMATIONS:
            raise ModelSourceError(f"{where}: observable {oid}: unknown observableTransformation {transformation!r}")
        if distribution not in DISTRIBUTIONS:
            raise ModelSourceError(f"{where}: observable {oid}: unknown noiseDistribution {distribution!r}")
        formula, noise = str(row["observableFormula"]), str(row["noiseFormula"])
        placeholders: dict[str, sympy.Symbol] = {}
        exprs = []
        counts = {"observable": 0, "noise": 0}
        for text, what in ((formula, "observableFormula"), (noise, "noiseFormula")):
            exprs.append(
                _observable_expr(
                    text, str(oid), what, where, system, substitutions, theta_index, fixed, placeholders, counts
                )
            )
        slots = [symbol(f"observableParameter{i}_{oid}") for i in range(1, counts["observable"] + 1)] + [
            symbol(f"noiseParameter{i}_{oid}") for i in range(1, counts["noise"] + 1)
        ]
        fn, _ = compile_function("observable", {"s": s_symbols, "p": arg_symbols, "q": slots}, exprs)
        reads_states = bool(exprs[1].free_symbols & set(s_symbols[:-1]))
        observables.append(
            Observable(
                str(oid),
                formula,
                noise,
                transformation,
                distribution,
                counts["observable"],
                counts["noise"],
                fn,
                reads_states,
            )
        )
    obs_index = {o.name: i for i, o in enumerate(observables)}
    # -------------------------------------------------------- measurements
    n_slots = max([o.n_observable_parameters + o.n_noise_parameters for o in observables] + [0])
    m = len(meas)
    m_condition = np.array([conditions.index(str(c)) for c in meas["simulationConditionId"]], dtype=np.int64)
    unknown = [o for o in meas["observableId"].astype(str) if o not in obs_index]
    if unknown:
        raise ModelSourceError(f"{where}: measurement of unknown observable {unknown[0]!r}")
    m_observable = np.array([obs_index[str(o)] for o in meas["observableId"]], dtype=np.int64)
    m_time = meas["time"].to_numpy(dtype=np.float64)
    m_value = meas["measurement"].to_numpy(dtype=np.float64)
    not_a_number = np.flatnonzero(~np.isfinite(m_value))
    if len(not_a_number):
        row = int(not_a_number[0])
        raise ModelSourceError(f"{where}: measurement row {row + 1} ({meas['observableId'].iloc[row]}): not a number")
    # a log's argument: PEtab requires positive measurements of such observables
    logged = np.array([o.transformation != "lin" for o in observables])[m_observable]
    not_positive = np.flatnonzero(logged & (m_value <= 0))
    if len(not_positive):
        row, of = int(not_positive[0]), observables[m_observable[not_positive[0]]]
        raise ModelSourceError(
            f"{where}: measurement row {row + 1} ({of.name}): {m_value[row]:g} under the observable's "
            f"{of.transformation} transformation, which needs a positive value"
        )
    if np.isinf(m_time).any():
        raise UnsupportedModelError(f"{where}: steady-state measurements (time inf)")
    p_index = np.full((m, max(n_slots, 1)), -1, dtype=np.int64)
    p_value = np.zeros((m, max(n_slots, 1)))
    for k, (_, row) in enumerate(meas.iterrows()):
        obs = observables[m_observable[k]]
        o_over = _overrides(row.get("observableParameters"))
        n_over = _overrides(row.get("noiseParameters"))
        if len(o_over) != obs.n_observable_parameters or len(n_over) != obs.n_noise_parameters:
            raise ModelSourceError(
                f"{where}: measurement row {k + 1} ({obs.name}): {len(o_over)} observable and {len(n_over)} noise "
                f"parameter overrides for {obs.n_observable_parameters} and {obs.n_noise_parameters} placeholders"
            )
        for slot, v in enumerate([*o_over, *n_over]):
            kind, x = resolve(v, f"measurement row {k + 1}")
            if kind == "theta":
                p_index[k, slot] = int(x)
            else:
                p_value[k, slot] = x
    # -------------------------------------------------------- the model
    # channels: the measured (condition, observable) pairs, conditions in table order
    pairs = sorted(set(zip(m_condition.tolist(), m_observable.tolist())))
    channels = tuple(
        observables[o].name if len(conditions) == 1 else f"{observables[o].name}@{conditions[c]}" for c, o in pairs
    )
    m_channel = np.array([pairs.index((c, o)) for c, o in zip(m_condition, m_observable)], dtype=np.int64)
    T = float(m_time.max()) if m else 1.0
    condition_inputs = (
        np.array([[columns[i][c] for i in inputs] for c in range(len(conditions))])
        if inputs
        else np.zeros((len(conditions), 0))
    )
    observation = _observation(
        observables, condition_inputs, pairs, m_channel, m_time, p_index, p_value, len(system.states)
    )
    observation = dataclasses.replace(observation, conditions=conditions)
    model = model_from_system(
        resolved_system,
        quantities=quantities,
        channels=channels,
        noise_sigma=dict(zip(channels, observation.reference_sigma(nominal).tolist())),
        inputs=inputs,
        observables=[o.name for o in observables],
        T=T,
        n_obs=m,
        description=f"PEtab problem {name}: {len(conditions)} condition(s), {len(observables)} observable(s)",
    )
    model = dataclasses.replace(model, observation=observation)
    measurements = pd.DataFrame(
        {"experiment": name, "t": m_time, "channel": [channels[k] for k in m_channel], "value": m_value}
    )
    design = pd.DataFrame(
        {
            "condition": [conditions[c] for c in m_condition],
            "observable": [observables[o].name for o in m_observable],
            "time": m_time,
        }
    )
    return PetabProblem(
        name=name,
        model=model,
        design=design,
        measurements=measurements,
        nominal=nominal,
        conditions=conditions,
        observables=tuple(observables),
        condition_inputs=condition_inputs,
        m_condition=m_condition,
        m_observable=m_observable,
        m_time=m_time,
        m_value=m_value,
        m_placeholder_index=p_index,
        m_placeholder_value=p_value,
        n_system_states=len(system.states),
    )


def _observation(observables, condition_inputs, pairs, m_channel, m_time, p_index, p_value, n_states) -> Observation:
    """The observation model of the problem's channels (mechinfer.models.observation): each
    channel's placeholders by measurement time, and the design sorted by time."""
    n_channels = len(pairs)
    per = [np.flatnonzero(m_channel == k) for k in range(n_channels)]
    per = [rows[np.argsort(m_time[rows], kind="stable")] for rows in per]
    width = max(len(r) for r in per)
    times = np.full((n_channels, width), np.inf)
    index = np.full((n_channels, width, p_index.shape[1]), -1, dtype=np.int64)
    value = np.zeros((n_channels, width, p_index.shape[1]))
    for k, rows in enumerate(per):
        times[k, : len(rows)] = m_time[rows]
        index[k, : len(rows)] = p_index[rows]
        value[k, : len(rows)] = p_value[rows]
    order = np.argsort(m_time, kind="stable")
    return Observation(
        observables=tuple(observables),
        condition_inputs=condition_inputs,
        channel_condition=np.array([c for c, _ in pairs], dtype=np.int64),
        channel_observable=np.array([o for _, o in pairs], dtype=np.int64),
        placeholder_time=times,
        placeholder_index=index,
        placeholder_value=value,
        n_system_states=n_states,
        design_t=m_time[order],
        design_channel=m_channel[order],
    )


def _observable_expr(text, oid, what, where, system, substitutions, theta_index, fixed, placeholders, counts):
    from petab.v1.math import sympify_petab

    try:
        expr = sympify_petab(text)
    except Exception as e:
        raise ModelSourceError(f"{where}: observable {oid}: {what} {text!r} does not parse: {e}") from None
    if not isinstance(expr, sympy.Basic):
        expr = sympy.Float(float(expr), 17)
    mapping: dict[sympy.Symbol, sympy.Expr] = {}
    for s in expr.free_symbols:
        name = s.name
        match = _PLACEHOLDER.match(name)
        if match and match.group(3) == oid:
            kind, n = match.group(1), int(match.group(2))
            counts[kind] = max(counts[kind], n)
            mapping[s] = symbol(name)
        elif name in system.states:
            mapping[s] = symbol(name)
        elif name in system.outputs:
            mapping[s] = system.outputs[name].xreplace(substitutions)
        elif name in system.parameters:
            mapping[s] = substitutions[symbol(name)]
        elif name in theta_index:
            mapping[s] = symbol(name)
        elif name in fixed:
            mapping[s] = sympy.Float(fixed[name], 17)
        elif name in ("t", "time"):
            mapping[s] = TIME
        else:
            raise ModelSourceError(f"{where}: observable {oid}: {what} {text!r} uses an unknown symbol {name!r}")
    out = expr.xreplace(mapping)
    # outputs of the system may read species that are states only by their symbols
    return out


__all__ = ["Observable", "PetabProblem", "load_petab"]
