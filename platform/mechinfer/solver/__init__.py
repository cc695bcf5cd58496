"""Batched, differentiable ODE solving for the mechanistic models.

Pieces compose (diffrax style): an :class:`ODETerm` (the equations), a method that takes
one step (:class:`Rodas4`), a step-size controller (:class:`IController`) and the loop
that drives them per sample (:func:`integrate`). ``solve`` picks a method by name:

- ``"rodas4"``: stiff-capable Rosenbrock, per-sample steps (the E. coli default);
- ``"dopri5"`` or any other torchdiffeq method name: torchdiffeq in rescaled time, for
  non-stiff models, ``adjoint=True`` for its adjoint. torchdiffeq stays for what it does
  well and Rodas4 does not do: explicit methods for non-stiff equations, and the adjoint
  (gradients in memory independent of the number of steps).
"""

from __future__ import annotations

import torch

from .controller import IController
from .integrate import integrate
from .rescaled import TorchdiffeqRescaled
from .rosenbrock import Rodas4
from .status import SolveStatus
from .term import ODETerm

__all__ = ["IController", "ODETerm", "Rodas4", "SolveStatus", "TorchdiffeqRescaled", "integrate", "solve"]

_STEPPERS = {"rodas4": Rodas4}


def solve(
    term: ODETerm,
    y0: torch.Tensor,
    args: torch.Tensor,
    t_obs: torch.Tensor,
    *,
    method: str = "rodas4",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    adjoint: bool = False,
    max_steps: int = 20_000,
    compile: bool | None = None,
):
    """States at each sample's sorted observation times: (B, N, S) and status (B,)."""
    controller = IController(rtol=rtol, atol=atol)
    if method in _STEPPERS:
        return integrate(term, _STEPPERS[method](), controller, y0, args, t_obs, max_steps=max_steps, compile=compile)
    return TorchdiffeqRescaled(method, adjoint=adjoint).solve(term, controller, y0, args, t_obs)
