"""A test-side reference simulator of an :class:`OdeSystem`: the SymPy expressions
lambdified to numpy/scipy and integrated by scipy's LSODA at tight tolerances. A
reference for tests and benchmarks only; the package never imports it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sympy
from scipy.integrate import solve_ivp

from mechinfer.models.odesystem import TIME, OdeSystem, symbol

RTOL = 1e-10
ATOL = 1e-14
_MODULES = ["scipy", "numpy"]


def simulate_reference(
    system: OdeSystem,
    times: Sequence[float] | np.ndarray,
    variables: Sequence[str],
    amounts: Sequence[str] = (),
    rtol: float = RTOL,
    atol: float = ATOL,
) -> np.ndarray:
    """(len(times), len(variables)) float64: each variable (a species as its concentration,
    as its amount when named in ``amounts``) at the system's own parameter values. The
    integration starts at time 0 (SBML's initial time); ``times`` are sorted, >= 0."""
    times = np.asarray(times, dtype=float)
    states = [symbol(s) for s in system.states]
    names = list(system.parameters)
    params = [symbol(p) for p in names]
    p = np.array([system.parameters[n] for n in names], dtype=float)
    args = (TIME, states, params)

    if states:
        y0 = np.array(
            [float(sympy.lambdify([params], e, _MODULES, dummify=True)(p)) for e in system.initial],
            dtype=float,
        )
        rates = sympy.lambdify(args, list(system.rates), _MODULES, dummify=True)

        def f(t: float, y: np.ndarray) -> np.ndarray:
            return np.asarray(rates(t, y, p), dtype=float)

        t_end = float(times[-1]) if len(times) else 0.0
        if t_end > 0:
            sol = solve_ivp(f, (0.0, t_end), y0, method="LSODA", t_eval=times, rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"{system.name}: LSODA failed: {sol.message}")
            ys = sol.y.T
        else:
            ys = np.tile(y0, (len(times), 1))
    else:
        ys = np.zeros((len(times), 0))

    out = np.empty((len(times), len(variables)))
    amount_set = set(amounts)
    for j, name in enumerate(variables):
        expr = system.value(name, amount=name in amount_set)
        fn = sympy.lambdify(args, expr, _MODULES, dummify=True)
        for i, t in enumerate(times):
            out[i, j] = float(fn(t, ys[i], p))
    return out
