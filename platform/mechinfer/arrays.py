"""Conversions and checks between the public face of the API (numpy, plain numbers)
and the torch code behind it."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(x, dtype=torch.float64, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def like_input(result: torch.Tensor, original):
    """Hand a result back as the type the caller passed in (numpy in, numpy out)."""
    if isinstance(original, torch.Tensor):
        return result
    return result.detach().cpu().numpy()


def positive_int(name: str, value) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def budget_seconds(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is not a number of
    seconds >= 0 (a time budget)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)
