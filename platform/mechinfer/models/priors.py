"""Priors of the inferred quantities and the z map of SPEC section 3.

Each prior maps a quantity to ``u`` in [0, 1] (its CDF) and back; ``z = Phi^-1(u)``.
The transforms are written once, in torch, so that the same code serves numpy callers
(through :mod:`mechinfer.arrays`), training and BFGS (differentiable in z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# u is kept this far from 0 and 1 so that a quantity exactly on a prior bound maps to a
# finite z (about +-7.9) instead of an infinity that would poison a network or optimiser.
U_EPS = 1e-15


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.low) / (self.high - self.low)

    def from_u(self, u: torch.Tensor) -> torch.Tensor:
        return self.low + u * (self.high - self.low)

    def dx_du(self, x: torch.Tensor) -> torch.Tensor:
        """d from_u / du at x = from_u(u)."""
        return torch.full_like(x, self.high - self.low)

    def describe(self) -> str:
        return f"uniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))

    def from_u(self, u: torch.Tensor) -> torch.Tensor:
        return torch.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))

    def dx_du(self, x: torch.Tensor) -> torch.Tensor:
        """d from_u / du at x = from_u(u)."""
        return x * (math.log(self.high) - math.log(self.low))

    def describe(self) -> str:
        return f"log-uniform({self.low:g}, {self.high:g})"


Prior = Uniform | LogUniform


def around_nominal(nominal: float, factor: float = 2.0) -> LogUniform:
    """log-uniform(nominal / factor, nominal * factor), the E. coli kinetic prior."""
    return LogUniform(nominal / factor, nominal * factor)


def to_z(priors: tuple[Prior, ...], theta: torch.Tensor) -> torch.Tensor:
    u = torch.stack([p.to_u(theta[..., i]) for i, p in enumerate(priors)], dim=-1)
    return torch.special.ndtri(u.clamp(U_EPS, 1.0 - U_EPS))


def from_z(priors: tuple[Prior, ...], z: torch.Tensor) -> torch.Tensor:
    u = torch.special.ndtr(z)
    return torch.stack([p.from_u(u[..., i]) for i, p in enumerate(priors)], dim=-1)


def from_z_and_derivative(priors: tuple[Prior, ...], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """theta = from_z(z) and d theta / d z, per parameter (the map acts on each alone)."""
    theta = from_z(priors, z)
    density = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)  # d u / d z
    dx_du = torch.stack([p.dx_du(theta[..., i]) for i, p in enumerate(priors)], dim=-1)
    return theta, dx_du * density


def from_u(priors: tuple[Prior, ...], u: torch.Tensor) -> torch.Tensor:
    return torch.stack([p.from_u(u[..., i]) for i, p in enumerate(priors)], dim=-1)
