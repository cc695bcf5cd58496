"""Batched, differentiable ODE solving for the mechanistic models.

Pieces compose (diffrax style): an :class:`ODETerm` (the equations), a method that takes
one step (:class:`Rodas4`), a step-size controller (:class:`IController`) and the loop
that drives them per sample (:func:`integrate`). ``solve`` picks a method by name:

- ``"rodas4"``: stiff-capable Rosenbrock, per-sample steps (the default of both models).
  ``backend`` chooses how it runs: ``"native"`` (:mod:`~mechinfer.solver.native`: the
  equations and the loop compiled to machine code per model, exact forward
  sensitivities instead of a tape; microseconds per step at any batch size, CPU only),
  ``"torch"`` (batched tensor steps, optionally torch.compile'd, on any device, with
  autograd through the steps), or ``"auto"``: native on the CPU for a term that has a
  native form, torch otherwise. Both run the same algorithm and agree to round-off.
- ``"dopri5"`` or any other torchdiffeq method name: torchdiffeq in rescaled time, for
  non-stiff models, ``adjoint=True`` for its adjoint. torchdiffeq stays for what it does
  well and Rodas4 does not do: explicit methods for non-stiff equations, and the adjoint
  (gradients in memory independent of the number of steps).
"""

from __future__ import annotations

import functools

import torch

from . import native as _native
from .controller import IController
from .integrate import integrate
from .rescaled import TorchdiffeqRescaled
from .rosenbrock import Rodas4
from .status import SolveStatus
from .term import ODETerm

__all__ = [
    "IController",
    "ODETerm",
    "Rodas4",
    "SolveStatus",
    "TorchdiffeqRescaled",
    "integrate",
    "jacobian",
    "nll_and_gradient",
    "solve",
]

_STEPPERS = {"rodas4": Rodas4}
RTOL, ATOL, MAX_STEPS = 1e-6, 1e-6, 20_000  # the solver's defaults, wherever it is called


def solve(
    term: ODETerm,
    y0: torch.Tensor,
    args: torch.Tensor,
    t_obs: torch.Tensor,
    *,
    method: str = "rodas4",
    rtol: float = RTOL,
    atol: float = ATOL,
    adjoint: bool = False,
    max_steps: int = MAX_STEPS,
    compile: bool | None = None,
    backend: str = "auto",
):
    """States at each sample's sorted observation times: (B, N, S) and status (B,)."""
    controller = IController(rtol=rtol, atol=atol)
    if method in _STEPPERS and _use_native(term, y0.device, backend):
        assert term.native is not None  # checked by _use_native
        return _native.solve(term.native(), y0, args, t_obs, rtol=rtol, atol=atol, max_steps=max_steps)
    if method in _STEPPERS:
        return integrate(term, _STEPPERS[method](), controller, y0, args, t_obs, max_steps=max_steps, compile=compile)
    return TorchdiffeqRescaled(method, adjoint=adjoint).solve(term, controller, y0, args, t_obs)


BACKENDS = ("auto", "native", "torch")


def _use_native(term: ODETerm, device: torch.device, backend: str) -> bool:
    """Whether the native solver runs a solve on ``device`` with these options."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown solver backend {backend!r}; one of {BACKENDS}")
    if backend == "torch":
        return False
    usable = term.native is not None and _native.available() and device.type == "cpu"
    if backend == "native" and not usable:
        raise ValueError("the native solver backend needs a CPU tensor, numba and a term with a native form")
    return usable


def _native_with(term: ODETerm, device: torch.device, options: dict):
    """(the term's native system, its tolerance and step options) where the native solver
    applies to a solve on ``device`` with these options, else None."""
    if not _use_native(term, device, options.get("backend", "auto")):
        return None
    assert term.native is not None  # checked by _use_native
    tolerances = {"rtol": RTOL, "atol": ATOL, "max_steps": MAX_STEPS}
    return term.native(), {k: options.get(k, default) for k, default in tolerances.items()}


def nll_and_gradient(term: ODETerm, **options):
    """The weighted least-squares loss from the term's own initial state (a function of
    args), by the native solver's discrete adjoint (one forward and one backward pass,
    whatever the number of parameters), as a function of numpy arrays:
    ``fn(args (B, P), t_obs, state, value, weight (B, N)) -> (loss (B,), its gradient in
    args (B, P), status (B,))``, loss = 1/2 sum_k weight_k (value_k - y(t_k)[state_k])^2,
    times sorted per row. The system and its tolerances are looked up once: a fit calls
    the function every evaluation. ``None`` where the native solver does not apply."""
    found = _native_with(term, torch.device("cpu"), options)  # numpy arrays
    if found is None:
        return None
    native, tolerances = found
    return functools.partial(native.nll_and_gradient, **tolerances)


def jacobian(term: ODETerm, args: torch.Tensor, t_obs: torch.Tensor, **options):
    """States (B, N, S) at sorted observation times from the term's own initial state (a
    function of args), their Jacobian in args (B, N, S, P) and status (B,), by the native
    solver's forward sensitivities; ``None`` where it does not apply (a GPU tensor, no
    native form): callers then differentiate :func:`solve`."""
    found = _native_with(term, args.device, options)
    if found is None:
        return None
    native, tolerances = found
    return _native.jacobian(native, args, t_obs, **tolerances)
