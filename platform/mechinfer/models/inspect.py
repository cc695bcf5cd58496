"""``mechinfer model show SOURCE`` and ``mechinfer model check SOURCE``: what a model
from any source declares, and whether it simulates, before anything is trained on it."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from .. import solver as _solver
from .base import Model


def _is_petab(source: str) -> bool:
    return str(source).lower().endswith((".yaml", ".yml"))


def _load(source: str) -> tuple[Model, Any]:
    """The model, and the PEtab problem where the source is one (else None)."""
    if _is_petab(source):
        from .petab import load_petab

        problem = load_petab(source)
        return problem.model, problem
    from .sources import load_model

    return load_model(source), None


def show(source: str) -> str:
    """A plain-text description: states, parameters with priors and units, observables
    and noise, conditions, horizon and design size."""
    m, problem = _load(source)
    lines = [f"model {m.name}: {m.description}"]
    src = getattr(m, "source", None)
    if src is not None:
        lines.append(f"source: {src.kind} {src.entry} (sha256 {src.hash[:16]})")
    lines.append(f"states ({len(m.states)}): " + ", ".join(_with_unit(s, u) for s, u in zip(m.states, m.state_units)))
    lines.append(f"parameters ({m.n_parameters}), physical units, prior:")
    nominal = problem.nominal if problem is not None else None
    for i, q in enumerate(m.quantities):
        extra = f"  nominal {nominal[i]:.6g}" if nominal is not None else ""
        lines.append(f"  {q.name:<28} {q.prior.describe():<34} {q.unit}{extra}")
    if problem is None:
        lines.append("observables: states, normal noise, lin")
        for c, s in zip(m.channels, m.sigma):
            lines.append(f"  {c:<28} sigma {s:g}")
        lines.append(
            f"conditions: one; design: {m.n_obs} observations uniform in [0, {m.T:g}], one random channel each"
        )
        return "\n".join(lines)
    lines.append(f"observables ({len(problem.observables)}):")
    for o in problem.observables:
        lines.append(f"  {o.name} = {o.formula}")
        lines.append(f"  {'':<4}noise {o.distribution}, {o.transformation} scale, sd = {o.noise_formula}")
    lines.append(f"conditions ({len(problem.conditions)}):")
    for c, values in zip(problem.conditions, problem.condition_inputs):
        shown = ", ".join(f"{k}={v:g}" for k, v in zip(m.inputs, values) if k.endswith("__value"))
        count = int((problem.design["condition"] == c).sum())
        lines.append(f"  {c}: {count} measurements" + (f"; {shown}" if shown else ""))
    lines.append(
        f"design: fixed, {len(problem.design)} (condition, observable, time) points, times in "
        f"[{problem.design['time'].min():g}, {m.T:g}]"
    )
    return "\n".join(lines)


def _with_unit(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


def check(source: str, n: int = 64, seed: int = 0) -> tuple[str, bool]:
    """Simulate ``n`` prior draws and the nominal point (PEtab: the table's nominal
    values; otherwise the prior's median, z = 0) at the model's design; report failed
    solves, and for a PEtab problem its log-likelihood at the nominal parameters. Returns
    the report and whether the nominal point solved."""
    m, problem = _load(source)
    draws = m.sample_prior(n, seed=seed)
    nominal = problem.nominal if problem is not None else np.asarray(m.from_z(np.zeros(m.n_parameters)))
    theta = np.vstack([nominal[None, :], draws])
    start = time.perf_counter()
    if problem is not None:
        with torch.no_grad():
            _, status = problem.solve_conditions(torch.from_numpy(theta))
        failed = (status != _solver.SolveStatus.OK).any(dim=1).numpy()
    else:
        t = np.linspace(0.0, m.T, m.n_obs)
        y = m.simulate(theta, t)
        failed = ~np.isfinite(y).all(axis=(1, 2))
    seconds = time.perf_counter() - start
    lines = [
        f"model {m.name}: {n} prior draws (seed {seed}) and the nominal point simulated in {seconds:.2f} s",
        f"failed solves: {int(failed[1:].sum())} of {n} prior draws; nominal point: {'FAILED' if failed[0] else 'ok'}",
    ]
    if problem is not None:
        ll = problem.log_likelihood()
        lines.append(
            f"log-likelihood at the nominal parameters: {ll:.6f}" if math.isfinite(ll) else "log-likelihood: nan"
        )
    return "\n".join(lines), not bool(failed[0])
