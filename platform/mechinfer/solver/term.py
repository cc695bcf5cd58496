"""The equation's term: y' = f(y, args), with its Jacobian from reverse-mode autograd."""

from __future__ import annotations

from collections.abc import Callable

import torch


class ODETerm:
    """Wraps ``f(y, args)`` for a batch: y (B, S), args (B, P) -> (B, S).

    The Jacobian is taken by reverse-mode autograd: samples are independent, so row i of
    every sample's Jacobian is the gradient of sum_b f_i; the S rows come from one batched
    backward pass (``is_grads_batched``), or S passes when the graph must be kept.
    Forward mode would need one pass in all, but in torch 2.13 forward-mode arithmetic
    runs through Python reference decompositions and costs 20-50x more per operation.
    When the caller records gradients the Jacobian is built with ``create_graph`` and
    stays in the graph, so gradients through an implicit step are those of the discrete
    method itself (what BFGS and fine-tuning need).
    """

    def __init__(
        self,
        f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        jacobian: Callable | None = None,
        native: Callable | None = None,
    ):
        self.f = f
        self.jacobian = jacobian  # optional (y, args) -> (f, J), e.g. by dual numbers
        # optional () -> mechinfer.solver.native.NativeSystem: the same equations compiled
        # for the CPU solver with forward sensitivities (built on first use)
        self.native = native

    def __call__(self, y: torch.Tensor, args: torch.Tensor) -> torch.Tensor:
        return self.f(y, args)

    def value_and_jacobian(self, y: torch.Tensor, args: torch.Tensor):
        """f(y) (B, S) and J[b, i, j] = d f_i / d y_j (B, S, S)."""
        if self.jacobian is not None:
            return self.jacobian(y, args)
        differentiable = torch.is_grad_enabled() and (y.requires_grad or args.requires_grad)
        n_batch, n_states = y.shape
        if not differentiable:
            with torch.enable_grad():
                y_in = y.detach().requires_grad_()
                value = self.f(y_in, args.detach())
                select = torch.eye(n_states, dtype=y.dtype, device=y.device)[:, None, :].expand(
                    n_states, n_batch, n_states
                )
                (rows,) = torch.autograd.grad(value, y_in, grad_outputs=select, is_grads_batched=True)
            return value.detach(), rows.permute(1, 0, 2)
        y_in = y if y.requires_grad else y.detach().requires_grad_()
        value = self.f(y_in, args)
        row_list = [
            torch.autograd.grad(value[:, i].sum(), y_in, retain_graph=True, create_graph=True)[0]
            for i in range(n_states)
        ]
        return value, torch.stack(row_list, dim=1)
