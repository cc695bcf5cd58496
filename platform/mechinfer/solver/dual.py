"""Forward-mode differentiation by operator overloading, for the solver's Jacobian.

Rate laws are written with + - * / and ``pos`` only (see mechinfer.models.base), so
evaluating them on :class:`Dual` numbers gives f and its Jacobian in one pass at about
three times the cost of f. torch's own forward mode would do the same, but in torch 2.13
its arithmetic runs through Python reference decompositions and costs 20-50x more per
operation; reverse mode needs one backward pass per state. The tangent arithmetic is
ordinary torch, so the Jacobian is itself differentiable by autograd (gradients through
an implicit step need dJ/dtheta).
"""

from __future__ import annotations

import torch


class Dual:
    """A value (B,) with its derivatives (S, B) with respect to S seed variables, or
    ``d = None`` for a quantity that does not depend on them (a parameter). Wrapping
    parameters too keeps every tensor operation inside Dual's own methods, which
    torch.compile can trace (a tensor operator handed a foreign object cannot be)."""

    __slots__ = ("d", "v")

    def __init__(self, v: torch.Tensor, d: torch.Tensor | None = None):
        self.v = v
        self.d = d

    @staticmethod
    def seed(y: torch.Tensor) -> list[Dual]:
        """One Dual per column of y (B, S), seeded with the identity."""
        n = y.shape[-1]
        eye = torch.eye(n, dtype=y.dtype, device=y.device)[:, :, None].expand(n, n, y.shape[0])
        return [Dual(y[:, i], eye[:, i]) for i in range(n)]

    @staticmethod
    def constant(x: torch.Tensor) -> Dual:
        return Dual(x, None)

    def __add__(self, o):
        if isinstance(o, Dual):
            return Dual(self.v + o.v, _add(self.d, o.d))
        return Dual(self.v + o, self.d)

    __radd__ = __add__

    def __sub__(self, o):
        if isinstance(o, Dual):
            return Dual(self.v - o.v, _add(self.d, _neg(o.d)))
        return Dual(self.v - o, self.d)

    def __rsub__(self, o):
        return Dual(o - self.v, _neg(self.d))

    def __neg__(self):
        return Dual(-self.v, _neg(self.d))

    def __mul__(self, o):
        if isinstance(o, Dual):
            return Dual(self.v * o.v, _add(_scale(self.d, o.v), _scale(o.d, self.v)))
        return Dual(self.v * o, _scale(self.d, o))

    __rmul__ = __mul__

    def __truediv__(self, o):
        if isinstance(o, Dual):
            q = self.v / o.v
            if o.d is None:
                return Dual(q, _scale(self.d, 1.0 / o.v))
            return Dual(q, _add(self.d, _scale(o.d, -q)) / o.v)
        return Dual(self.v / o, _scale(self.d, 1.0 / o))

    def __rtruediv__(self, o):
        q = o / self.v
        return Dual(q, _scale(self.d, -q / self.v))

    def clip(self, min):
        return Dual(self.v.clip(min=min), None if self.d is None else self.d * (self.v > min))


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _neg(a):
    return None if a is None else -a


def _scale(a, x):
    return None if a is None else a * x


def value_and_jacobian(duals_out: list, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rate outputs (Duals, or plain values that do not depend on the state) into
    f (B, S) and J (B, S, S) with J[b, i, j] = d f_i / d y_j. Where no output depends on
    the state (rates that are constants or functions of time alone), J is zero and the
    states ``y`` (B, S) give the shapes."""
    ref = next((o for o in duals_out if isinstance(o, Dual) and o.d is not None), None)
    if ref is None:
        if y is None:
            raise ValueError("no rate depends on the state: pass the states to shape the Jacobian")
        values = [o.v if isinstance(o, Dual) else o for o in duals_out]
        f = torch.stack(
            [
                v.expand(y.shape[:-1]) if isinstance(v, torch.Tensor) else torch.full_like(y[..., 0], float(v))
                for v in values
            ],
            dim=-1,
        )
        return f, torch.zeros(*y.shape, y.shape[-1], dtype=y.dtype, device=y.device)
    ref_d = ref.d
    assert ref_d is not None  # selected for it
    n_seed = ref_d.shape[0]
    values, rows = [], []
    for o in duals_out:
        if isinstance(o, Dual) and o.d is not None:
            values.append(o.v.expand_as(ref.v))
            rows.append(o.d.expand_as(ref_d))
        else:
            o = o.v if isinstance(o, Dual) else o
            values.append(torch.as_tensor(o, dtype=ref.v.dtype, device=ref.v.device).expand_as(ref.v))
            rows.append(torch.zeros(n_seed, *ref.v.shape, dtype=ref.v.dtype, device=ref.v.device))
    return torch.stack(values, dim=-1), torch.stack(rows, dim=0).permute(2, 0, 1)
