"""The rate laws as symbolic expressions, and the source code of their derivatives.

A model's rate laws are one Python function written with + - * / and ``pos`` only
(mechinfer.models.base). Called on :class:`Sym` values it builds sympy expressions, so
the same function that runs on torch tensors and dual numbers also yields, exactly and
once per process, f, its Jacobians in the states and the arguments, and the
derivatives of Jacobian-vector products that exact forward sensitivities of an implicit
step need (see :mod:`mechinfer.solver.native`). :func:`source` prints them, after common
subexpression elimination, as plain scalar Python functions for numba.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter


class Pos(sympy.Function):
    """max(x, 0), with the derivative dual numbers give it: 1 where x > 0, else 0."""

    def fdiff(self, argindex=1):
        return Step(self.args[0])


class Step(sympy.Function):
    """1 where x > 0, else 0 (the derivative of :class:`Pos`; its own derivative is 0)."""

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class Floor(sympy.Function):
    """floor(x), whose derivative is 0 wherever it exists (sympy leaves it unevaluated)."""

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class Ceiling(sympy.Function):
    """ceiling(x), whose derivative is 0 wherever it exists."""

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class Acot(sympy.Function):
    """arccot(x) = atan(1 / x), pi / 2 at x = 0 (as sympy's acot(0) and libroadrunner).
    sympy's own acot rewrites acot(-x) as -acot(x), which is -pi / 2 at x = 0: an SBML
    rate arccot(-time) would start at -pi / 2. This one stays as written."""

    def fdiff(self, argindex=1):
        x = self.args[0]
        return -1 / (1 + x**2)

    def _pythoncode(self, printer):
        """Printed by every Python code printer (this module's for native code, numpy's and
        scipy's in lambdify) as atan(1 / (x + 0.0)): x + 0.0 is +0.0 for either zero."""
        x = f"({printer._print(self.args[0])} + 0.0)"
        module = getattr(printer, "_module", "math")
        if module == "math":  # native code: numba's error model gives 1 / 0 = inf
            return f"math.atan(1.0 / {x})"
        divide, atan = (printer._module_format(f"{module}.{f}") for f in ("divide", "arctan"))
        return f"{atan}({divide}(1.0, {x}))"  # inf, not ZeroDivisionError, for a Python float 0

    _numpycode = _lambdacode = _pythoncode  # the names numpy's / scipy's and lambda printers look for


class Factorial(sympy.Function):
    """x! = Gamma(x + 1). The native code prints it; its derivative (digamma) has no
    numba form, so a model whose rates need it runs on the torch backend."""

    def fdiff(self, argindex=1):
        raise ValueError("factorial: its derivative is not available to the native solver (use the torch backend)")


def _expr(x):
    if isinstance(x, Sym):
        return x.e
    return sympy.Float(float(x), 17)


class Sym:
    """A sympy expression with the operators rate laws use, and ``clip(min=0)`` (pos)."""

    __slots__ = ("e",)

    def __init__(self, e):
        self.e = e

    def __add__(self, o):
        return Sym(self.e + _expr(o))

    def __radd__(self, o):
        return Sym(_expr(o) + self.e)

    def __sub__(self, o):
        return Sym(self.e - _expr(o))

    def __rsub__(self, o):
        return Sym(_expr(o) - self.e)

    def __mul__(self, o):
        return Sym(self.e * _expr(o))

    def __rmul__(self, o):
        return Sym(_expr(o) * self.e)

    def __truediv__(self, o):
        return Sym(self.e / _expr(o))

    def __rtruediv__(self, o):
        return Sym(_expr(o) / self.e)

    def __neg__(self):
        return Sym(-self.e)

    def clip(self, min):
        if min != 0:
            raise ValueError("rate laws clip at 0 only (pos)")
        return Sym(Pos(self.e))


class _Printer(PythonCodePrinter):
    def _print_Pos(self, expr):
        return f"max({self._print(expr.args[0])}, 0.0)"

    def _print_Step(self, expr):
        return f"(1.0 if {self._print(expr.args[0])} > 0.0 else 0.0)"

    def _print_Pow(self, expr, rational=False):
        # x ** -n for an integer n: numba's integer power raises ZeroDivisionError at
        # x = 0 whatever the error model (found on Elowitz's Hill terms at a draw's
        # zero state); 1.0 / x ** n gives inf there, as every other division does
        base, exponent = expr.args
        if exponent.is_Integer and exponent < 0:
            inner = base if exponent == -1 else sympy.Pow(base, -exponent, evaluate=False)
            return f"(1.0 / {self.parenthesize(inner, PRECEDENCE['Mul'])})"
        return super()._print_Pow(expr, rational=rational)

    def _print_acot(self, expr):  # sympy's own (a formula string's), printed as Acot is
        return Acot(*expr.args)._pythoncode(self)

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Floor(self, expr):
        return f"float(math.floor({self._print(expr.args[0])}))"

    def _print_Ceiling(self, expr):
        return f"float(math.ceil({self._print(expr.args[0])}))"

    def _print_Factorial(self, expr):
        return f"math.gamma({self._print(expr.args[0])} + 1.0)"

    def _print_Heaviside(self, expr):  # d Max / d x: 1 where x > 0 (the arguments' order decides ties)
        return f"(1.0 if {self._print(expr.args[0])} > 0.0 else 0.0)"

    def _print_DiracDelta(self, expr):  # the derivative of a step, zero almost everywhere
        return "0.0"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"


def derivatives(f: Callable[[list, list], Sequence], n_states: int, n_args: int, initial: Callable) -> dict:
    """f(y, a) -> the S derivatives dy/dt and initial(a) -> the S initial states, called
    on symbols. Returns the expressions (lists, row-major) of f, J = df/dy (S, S),
    Fa = df/da (S, P), for a vector v Gy = d(J v)/dy (S, S) and Ga = d(J v)/da (S, P),
    the initial state y0 (S,) with its Jacobian Y0 = dy0/da (S, P), and the gradients
    of w.f and M:J for the adjoint."""
    y = sympy.symbols(f"y0:{n_states}", real=True)
    a = sympy.symbols(f"a0:{n_args}", real=True)
    v = sympy.symbols(f"v0:{n_states}", real=True)
    w = sympy.symbols(f"w0:{n_states}", real=True)
    rates = [_expr(r) for r in f([Sym(s) for s in y], [Sym(s) for s in a])]
    if len(rates) != n_states:
        raise ValueError(f"the rate function returned {len(rates)} derivatives for {n_states} states")
    y0 = [_expr(e) for e in initial([Sym(s) for s in a])]
    if len(y0) != n_states:
        raise ValueError(f"the initial-state function returned {len(y0)} values for {n_states} states")
    jac = [[sympy.diff(r, s) for s in y] for r in rates]
    jv = [sum((jac[i][j] * v[j] for j in range(n_states)), sympy.S.Zero) for i in range(n_states)]
    # vector-Jacobian products, for the discrete adjoint: gradients of the scalars w.f and
    # M:J = sum_ij M_ij J_ij (S + P expressions each, instead of the S (S + P) entries of
    # the matrices). One M:J serves all six stages of a step, whose J is the same (the
    # step start's): the sum over stages of w_s.(J k_s) is M:J with M = sum_s w_s k_s^T.
    m = sympy.symbols(f"m0:{n_states * n_states}", real=True)
    wf = sum((w[i] * rates[i] for i in range(n_states)), sympy.S.Zero)
    mj = sum((m[i * n_states + j] * jac[i][j] for i in range(n_states) for j in range(n_states)), sympy.S.Zero)
    return {
        "symbols": (y, a, v, w, m),
        "wJ": [sympy.diff(wf, s) for s in y],
        "wFa": [sympy.diff(wf, s) for s in a],
        "mJy": [sympy.diff(mj, s) for s in y],
        "mJa": [sympy.diff(mj, s) for s in a],
        "f": rates,
        "J": [e for row in jac for e in row],
        "Fa": [sympy.diff(r, s) for r in rates for s in a],
        "Gy": [sympy.diff(e, s) for e in jv for s in y],
        "Ga": [sympy.diff(e, s) for e in jv for s in a],
        "y0": y0,
        "Y0": [sympy.diff(e, s) for e in y0 for s in a],
    }


def _function(name: str, inputs: dict[str, Sequence], outputs: dict[str, list]) -> str:
    """Source of ``def name(<inputs>, <outputs>)``: unpack the inputs, evaluate the
    outputs' expressions with shared subexpressions once, write them to the output arrays."""
    printer = _Printer()
    flat = [e for exprs in outputs.values() for e in exprs]
    shared, reduced = sympy.cse(flat, symbols=sympy.numbered_symbols("x"), optimizations="basic")
    lines = [f"def {name}({', '.join([*inputs, *outputs])}):"]
    for array, symbols in inputs.items():
        lines += [f"    {s} = {array}[{i}]" for i, s in enumerate(symbols)]
    lines += [f"    {s} = {printer.doprint(e)}" for s, e in shared]
    i = 0
    for array, exprs in outputs.items():
        for j in range(len(exprs)):
            lines.append(f"    {array}[{j}] = {printer.doprint(reduced[i])}")
            i += 1
    lines.append("    return 0")
    return "\n".join(lines)


def source(f: Callable[[list, list], Sequence], n_states: int, n_args: int, initial: Callable) -> str:
    """Python source of seven scalar functions over flat float64 arrays: ``rhs(y, a, f)``,
    ``linearise(y, a, f, J, Fa)``, ``rhs_jacobian(y, a, f, J)`` (a plain step needs no
    Fa), ``jvp_derivatives(y, a, v, Gy, Ga)`` and
    ``initial(a, y0, Y0)``, and the vector-Jacobian products of the adjoint,
    ``vjp_rhs(y, a, w, gy, ga)`` (gy = J^T w, ga = Fa^T w) and ``vjp_jac(y, a, m, gy, ga)``
    (the gradients of M:J in y and a, M flat row-major) (see :func:`derivatives`)."""
    d = derivatives(f, n_states, n_args, initial)
    y, a, v, w, m = d["symbols"]
    return "\n\n\n".join(
        [
            _function("rhs", {"y": y, "a": a}, {"f": d["f"]}),
            _function("linearise", {"y": y, "a": a}, {"f": d["f"], "J": d["J"], "Fa": d["Fa"]}),
            _function("rhs_jacobian", {"y": y, "a": a}, {"f": d["f"], "J": d["J"]}),
            _function("jvp_derivatives", {"y": y, "a": a, "v": v}, {"Gy": d["Gy"], "Ga": d["Ga"]}),
            _function("initial", {"a": a}, {"y0": d["y0"], "Y0": d["Y0"]}),
            _function("vjp_rhs", {"y": y, "a": a, "w": w}, {"gy": d["wJ"], "ga": d["wFa"]}),
            _function("vjp_jac", {"y": y, "a": a, "m": m}, {"gy": d["mJy"], "ga": d["mJa"]}),
        ]
    )
