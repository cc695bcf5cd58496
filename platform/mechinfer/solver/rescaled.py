"""torchdiffeq for non-stiff models, in rescaled time.

torchdiffeq integrates one system over one shared time grid. Observation times differ per
sample, so each (sample, observation) pair becomes its own copy of the system in
s in [0, 1] with dy/ds = t_k f(y): at s = 1 it sits at y(t_k). One odeint call from 0 to
1 then serves every sample's own times, and torchdiffeq's adjoint is available for
memory-light gradients. The error norm is the max over all copies, so the worst sample
sets the tolerance rather than being averaged away.
"""

from __future__ import annotations

import torch
import torchdiffeq

from .controller import IController
from .status import SolveStatus


class TorchdiffeqRescaled:
    def __init__(self, method: str = "dopri5", adjoint: bool = False):
        self.method = method
        self.adjoint = adjoint

    def solve(self, term, controller: IController, y0, args, t_obs, **_):
        n_batch, n_obs = t_obs.shape
        n_states = y0.shape[-1]
        y = y0[:, None, :].expand(n_batch, n_obs, n_states).reshape(-1, n_states)
        a = args[:, None, :].expand(n_batch, n_obs, args.shape[-1]).reshape(-1, args.shape[-1])
        scale = t_obs.detach().reshape(-1, 1).to(y0.dtype)

        def func(s, state):
            return scale * term(state, a)

        odeint = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        extra = {"adjoint_params": (args,)} if self.adjoint and args.requires_grad else {}
        s = torch.tensor([0.0, 1.0], dtype=y0.dtype, device=y0.device)
        try:
            sol = odeint(
                func,
                y,
                s,
                rtol=controller.rtol,
                atol=controller.atol,
                method=self.method,
                options={"norm": lambda x: x.abs().max()},
                **extra,
            )[-1]
        except AssertionError:  # torchdiffeq's "underflow in dt": the batch cannot be solved
            status = torch.full((n_batch,), int(SolveStatus.STEP_UNDERFLOW), dtype=torch.int8, device=y0.device)
            return torch.full((n_batch, n_obs, n_states), torch.nan, dtype=y0.dtype, device=y0.device), status
        out = sol.reshape(n_batch, n_obs, n_states)
        ok = torch.isfinite(out).all(dim=-1).all(dim=-1)
        status = torch.where(ok, int(SolveStatus.OK), int(SolveStatus.STEP_UNDERFLOW)).to(torch.int8)
        return torch.where(ok[:, None, None], out, torch.nan), status
