"""Step-size control, separate from the method that takes the step (diffrax style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IController:
    """Per-sample integral controller on the RMS of the scaled local error."""

    rtol: float = 1e-6
    atol: float = 1e-6
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 6.0

    def error_norm(self, y: torch.Tensor, y_new: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        scale = self.atol + self.rtol * torch.maximum(y.abs(), y_new.abs())
        norm = (err / scale).square().mean(dim=-1).sqrt()
        return torch.where(torch.isfinite(norm) & torch.isfinite(y_new).all(dim=-1), norm, torch.inf)

    def factor(self, norm: torch.Tensor, order: int) -> torch.Tensor:
        """Multiplier for the step size after a step whose error norm was ``norm``."""
        raw = self.safety * norm.clamp(min=1e-10) ** (-1.0 / order)
        upper = torch.where(norm <= 1.0, self.factor_max, 1.0)  # never grow after a rejection
        return torch.minimum(raw.clamp(min=self.factor_min), torch.as_tensor(upper, dtype=norm.dtype))

    def initial_step(self, y0: torch.Tensor, f0: torch.Tensor, order: int) -> torch.Tensor:
        """Hairer's starting step: 1% of the ratio of the scaled state to its derivative."""
        scale = self.atol + self.rtol * y0.abs()
        d0 = (y0 / scale).square().mean(dim=-1).sqrt()
        d1 = (f0 / scale).square().mean(dim=-1).sqrt()
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300))
        return h0
