"""SymPy expressions as Python functions that run in every engine the solver has.

A model imported from a file (SBML, PEtab) is a set of SymPy expressions. The solver
needs them as *one* function that runs on torch tensors (the torch Rodas4 steps), on
:class:`~mechinfer.solver.dual.Dual` numbers (its Jacobian), on
:class:`~mechinfer.solver.symbolic.Sym` symbols (the native code generator derives every
derivative from them) and on numpy arrays (the scipy reference, outputs): the built-in
models' rate laws are such functions, written by hand with arithmetic and ``pos``.

:func:`compile_function` prints expressions as Python source that calls the functions of
:data:`OPS` (``_m.exp(x)``, ``_m.piecewise(...)``); each of them dispatches on the kind of
value it is given. So the math of a model exists once, as expressions, and every engine
runs it; the derivative rules of each function are written once per engine (sympy knows
its own; :class:`Dual` gets them here).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.special
import sympy
import torch

from ..solver.dual import Dual
from ..solver.symbolic import Acot, Ceiling, Factorial, Floor, Sym

# ---------------------------------------------------------------- unary functions
# name -> (sympy function, torch function, torch derivative as a function of (x, f(x)), numpy function)
_sec = lambda x: 1.0 / torch.cos(x)
_csc = lambda x: 1.0 / torch.sin(x)
_cot = lambda x: 1.0 / torch.tan(x)

# arccot(0) is pi / 2 (sympy's acot(0), libroadrunner's); atan(1 / x) gives -pi / 2 at x = -0.0,
# which MathML's <minus/> of a zero (-time at t = 0) yields. x + 0.0 is +0.0 for either zero
# and x everywhere else (IEEE 754: no compiler without fast-math folds it away), so every
# engine writes arccot as atan(1 / (x + 0.0)); solver.symbolic prints it so for native code.
_UNARY: dict[str, tuple[Callable, Callable, Callable, Callable]] = {
    "exp": (sympy.exp, torch.exp, lambda x, f: f, np.exp),
    "log": (sympy.log, torch.log, lambda x, f: 1.0 / x, np.log),
    "abs": (sympy.Abs, torch.abs, lambda x, f: torch.sign(x), np.abs),
    "floor": (Floor, torch.floor, lambda x, f: torch.zeros_like(x), np.floor),
    "ceiling": (Ceiling, torch.ceil, lambda x, f: torch.zeros_like(x), np.ceil),
    "factorial": (
        Factorial,
        lambda x: torch.exp(torch.lgamma(x + 1.0)),
        lambda x, f: f * torch.digamma(x + 1.0),
        lambda x: scipy.special.gamma(np.asarray(x, dtype=np.float64) + 1.0),
    ),
    "sin": (sympy.sin, torch.sin, lambda x, f: torch.cos(x), np.sin),
    "cos": (sympy.cos, torch.cos, lambda x, f: -torch.sin(x), np.cos),
    "tan": (sympy.tan, torch.tan, lambda x, f: 1.0 + f * f, np.tan),
    "sec": (sympy.sec, _sec, lambda x, f: f * torch.tan(x), lambda x: 1.0 / np.cos(x)),
    "csc": (sympy.csc, _csc, lambda x, f: -f * _cot(x), lambda x: 1.0 / np.sin(x)),
    "cot": (sympy.cot, _cot, lambda x, f: -1.0 - f * f, lambda x: 1.0 / np.tan(x)),
    "asin": (sympy.asin, torch.asin, lambda x, f: 1.0 / torch.sqrt(1.0 - x * x), np.arcsin),
    "acos": (sympy.acos, torch.acos, lambda x, f: -1.0 / torch.sqrt(1.0 - x * x), np.arccos),
    "atan": (sympy.atan, torch.atan, lambda x, f: 1.0 / (1.0 + x * x), np.arctan),
    "asec": (
        sympy.asec,
        lambda x: torch.acos(1.0 / x),
        lambda x, f: 1.0 / (x * x * torch.sqrt(1.0 - 1.0 / (x * x))),
        lambda x: np.arccos(1.0 / x),
    ),
    "acsc": (
        sympy.acsc,
        lambda x: torch.asin(1.0 / x),
        lambda x, f: -1.0 / (x * x * torch.sqrt(1.0 - 1.0 / (x * x))),
        lambda x: np.arcsin(1.0 / x),
    ),
    "acot": (  # atan(1 / (x + 0.0)): pi / 2 at x = 0 of either sign (see above)
        Acot,
        lambda x: torch.atan(1.0 / (x + 0.0)),
        lambda x, f: -1.0 / (1.0 + x * x),
        lambda x: np.arctan(1.0 / (x + 0.0)),
    ),
    "sinh": (sympy.sinh, torch.sinh, lambda x, f: torch.cosh(x), np.sinh),
    "cosh": (sympy.cosh, torch.cosh, lambda x, f: torch.sinh(x), np.cosh),
    "tanh": (sympy.tanh, torch.tanh, lambda x, f: 1.0 - f * f, np.tanh),
    "sech": (
        sympy.sech,
        lambda x: 1.0 / torch.cosh(x),
        lambda x, f: -f * torch.tanh(x),
        lambda x: 1.0 / np.cosh(x),
    ),
    "csch": (
        sympy.csch,
        lambda x: 1.0 / torch.sinh(x),
        lambda x, f: -f / torch.tanh(x),
        lambda x: 1.0 / np.sinh(x),
    ),
    "coth": (
        sympy.coth,
        lambda x: 1.0 / torch.tanh(x),
        lambda x, f: 1.0 - f * f,
        lambda x: 1.0 / np.tanh(x),
    ),
    "asinh": (sympy.asinh, torch.asinh, lambda x, f: 1.0 / torch.sqrt(x * x + 1.0), np.arcsinh),
    "acosh": (sympy.acosh, torch.acosh, lambda x, f: 1.0 / torch.sqrt(x * x - 1.0), np.arccosh),
    "atanh": (sympy.atanh, torch.atanh, lambda x, f: 1.0 / (1.0 - x * x), np.arctanh),
    "asech": (
        sympy.asech,
        lambda x: torch.acosh(1.0 / x),
        lambda x, f: -1.0 / (x * torch.sqrt(1.0 - x * x)),
        lambda x: np.arccosh(1.0 / x),
    ),
    "acsch": (
        sympy.acsch,
        lambda x: torch.asinh(1.0 / x),
        lambda x, f: -1.0 / (torch.abs(x) * torch.sqrt(1.0 + x * x)),
        lambda x: np.arcsinh(1.0 / x),
    ),
    "acoth": (
        sympy.acoth,
        lambda x: torch.atanh(1.0 / x),
        lambda x, f: 1.0 / (1.0 - x * x),
        lambda x: np.arctanh(1.0 / x),
    ),
}
# sympy's class name -> our op name (where they differ)
_SYMPY_NAMES = {"Abs": "abs", "Floor": "floor", "Ceiling": "ceiling", "Factorial": "factorial", "Acot": "acot"}


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _torch_like(x, ref: torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


class _Ops:
    """The functions generated code calls (as ``_m.<name>``); each dispatches on its
    arguments: Sym -> sympy, Dual -> value and derivative, tensor -> torch, else numpy."""

    def __getattr__(self, name: str):  # unary functions
        if name not in _UNARY:
            raise AttributeError(name)
        sym_f, torch_f, torch_df, numpy_f = _UNARY[name]

        def op(x):
            if isinstance(x, Sym):
                return Sym(sym_f(x.e))
            if isinstance(x, Dual):
                v = torch_f(x.v)
                return Dual(v, None if x.d is None else x.d * torch_df(x.v, v))
            if _is_tensor(x):
                return torch_f(x)
            return numpy_f(np.asarray(x, dtype=np.float64))

        setattr(self, name, op)
        return op

    # ------------------------------------------------------------ powers
    @staticmethod
    def pow(a, b):
        """a ** b; an integer exponent is taken exactly (a negative base allowed)."""
        if isinstance(a, Sym) or isinstance(b, Sym):
            return Sym(sympy.Pow(_sym(a), _sym(b)))
        if isinstance(a, Dual) or isinstance(b, Dual):
            return _dual_pow(a, b)
        if _is_tensor(a) or _is_tensor(b):
            ref = a if _is_tensor(a) else b
            return torch.pow(_torch_like(a, ref), _torch_like(b, ref))
        return np.power(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

    # ------------------------------------------------------------ min / max
    @staticmethod
    def min(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = _Ops.piecewise((_Ops.le(out, x), out), x)
        return out

    @staticmethod
    def max(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = _Ops.piecewise((_Ops.ge(out, x), out), x)
        return out

    # ------------------------------------------------------------ relations, logic
    @staticmethod
    def lt(a, b):
        return _relation(a, b, sympy.Lt, torch.lt, np.less)

    @staticmethod
    def le(a, b):
        return _relation(a, b, sympy.Le, torch.le, np.less_equal)

    @staticmethod
    def gt(a, b):
        return _relation(a, b, sympy.Gt, torch.gt, np.greater)

    @staticmethod
    def ge(a, b):
        return _relation(a, b, sympy.Ge, torch.ge, np.greater_equal)

    @staticmethod
    def eq(a, b):
        return _relation(a, b, sympy.Eq, torch.eq, np.equal)

    @staticmethod
    def ne(a, b):
        return _relation(a, b, sympy.Ne, torch.ne, np.not_equal)

    @staticmethod
    def and_(*xs):
        return _logic(xs, sympy.And, torch.logical_and, np.logical_and)

    @staticmethod
    def or_(*xs):
        return _logic(xs, sympy.Or, torch.logical_or, np.logical_or)

    @staticmethod
    def xor(*xs):
        return _logic(xs, sympy.Xor, torch.logical_xor, np.logical_xor)

    @staticmethod
    def not_(x):
        if isinstance(x, Sym):
            return Sym(sympy.Not(x.e))
        if _is_tensor(x):
            return torch.logical_not(x)
        return np.logical_not(x)

    # ------------------------------------------------------------ piecewise
    @staticmethod
    def piecewise(*pieces):
        """piecewise((cond_1, value_1), ..., (cond_k, value_k), otherwise): the value of
        the first true condition, else ``otherwise``. Every branch is evaluated (arrays);
        the derivative is the chosen branch's."""
        *pairs, otherwise = pieces
        if any(isinstance(v, Sym) or isinstance(c, Sym) for c, v in pairs) or isinstance(otherwise, Sym):
            args = [(_sym(v), _sym_bool(c)) for c, v in pairs] + [(_sym(otherwise), sympy.true)]
            return Sym(sympy.Piecewise(*args))
        out = otherwise
        for cond, value in reversed(pairs):
            out = _where(cond, value, out)
        return out


OPS = _Ops()


def _sym(x):
    if isinstance(x, Sym):
        return x.e
    if isinstance(x, bool | np.bool_):
        return sympy.true if x else sympy.false
    return sympy.Float(float(x), 17)


def _sym_bool(x):
    if isinstance(x, Sym):
        return x.e
    return sympy.true if bool(x) else sympy.false


def _value(x):
    return x.v if isinstance(x, Dual) else x


def _relation(a, b, sym_f, torch_f, numpy_f):
    if isinstance(a, Sym) or isinstance(b, Sym):
        return Sym(sym_f(_sym(a), _sym(b)))
    a, b = _value(a), _value(b)
    if _is_tensor(a) or _is_tensor(b):
        ref = a if _is_tensor(a) else b
        return torch_f(_torch_like(a, ref), _torch_like(b, ref))
    return numpy_f(a, b)


def _logic(xs, sym_f, torch_f, numpy_f):
    if any(isinstance(x, Sym) for x in xs):
        return Sym(sym_f(*[_sym_bool(x) for x in xs]))
    out = xs[0]
    for x in xs[1:]:
        if _is_tensor(out) or _is_tensor(x):
            ref = out if _is_tensor(out) else x
            out = torch_f(_torch_like(out, ref), _torch_like(x, ref))
        else:
            out = numpy_f(out, x)
    return out


def _where(cond, a, b):
    """cond ? a : b for tensors, duals and numpy values alike."""
    if isinstance(a, Dual) or isinstance(b, Dual):
        da, db = _dual(a), _dual(b)
        ref = da.v if _is_tensor(da.v) else db.v
        c = _torch_like(cond, ref) if not isinstance(cond, bool | np.bool_) else cond
        v = _where(c, da.v, db.v)
        if da.d is None and db.d is None:
            return Dual(v, None)
        shape_ref = da.d if da.d is not None else db.d
        assert shape_ref is not None
        d_a = da.d if da.d is not None else torch.zeros_like(shape_ref)
        d_b = db.d if db.d is not None else torch.zeros_like(shape_ref)
        return Dual(v, torch.where(torch.as_tensor(c, device=shape_ref.device), d_a, d_b))
    if _is_tensor(a) or _is_tensor(b) or _is_tensor(cond):
        ref = next(x for x in (a, b, cond) if _is_tensor(x))
        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float64
        ta = a if _is_tensor(a) else torch.as_tensor(a, dtype=dtype, device=ref.device)
        tb = b if _is_tensor(b) else torch.as_tensor(b, dtype=dtype, device=ref.device)
        tc = cond if _is_tensor(cond) else torch.as_tensor(cond, device=ref.device)
        return torch.where(tc, ta, tb)
    return np.where(cond, a, b)


def _dual(x) -> Dual:
    return x if isinstance(x, Dual) else Dual(x, None)


def _dual_pow(a, b) -> Dual:
    da, db = _dual(a), _dual(b)
    ref = da.v if _is_tensor(da.v) else db.v
    av, bv = _torch_like(da.v, ref), _torch_like(db.v, ref)
    v = torch.pow(av, bv)
    d = None
    if da.d is not None:
        # b a^(b-1) da, exact for integer exponents of a negative base
        d = da.d * (bv * torch.pow(av, bv - 1.0))
    if db.d is not None:
        term = db.d * (v * torch.log(av))
        d = term if d is None else d + term
    return Dual(v, d)


# ---------------------------------------------------------------- IEEE 754 constants
# SymPy evaluates an operation on exact constants exactly: 1/0 and log(0) become zoo (complex
# infinity, no sign, no float), sqrt(-1), log(-1) and acosh(0.5) imaginary numbers, and a
# comparison with nan or a max of nan raises. An SBML model's math is IEEE 754 double
# arithmetic (what every engine here runs, what the SBML Test Suite's results are): 1/0 is
# +inf, log(0) -inf, sqrt(-1) nan, nan < 1 false. ieee() builds an operation as SymPy does
# except where all its arguments are real constants and SymPy's result is not a real number
# (or SymPy raises): that operation is folded in float64 instead.


def _is_real_constant(a) -> bool:
    return isinstance(a, sympy.Expr) and bool(a.is_number) and not a.has(sympy.zoo) and a.is_extended_real is not False


def _not_real(out) -> bool:
    return isinstance(out, sympy.Expr) and bool(out.is_number) and (out.has(sympy.zoo) or out.is_extended_real is False)


def number(value):
    """A float64 (or numpy bool) as SymPy holds it exactly: nan, +-oo, an Integer where it
    is integral (below 2**53), else a Float; a bool as true / false."""
    if isinstance(value, bool | np.bool_) or (isinstance(value, np.ndarray) and value.dtype == bool):
        return sympy.true if bool(value) else sympy.false
    value = float(value)
    if math.isnan(value):
        return sympy.nan
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    if value.is_integer() and abs(value) < 2**53:
        return sympy.Integer(int(value))
    return sympy.Float(value)


def ieee(build: Callable, fold: Callable | None, *args):
    """``build(*args)`` (SymPy), or, where every argument is a real constant and SymPy's
    result is not a real number or SymPy raises, ``fold`` of the arguments as float64."""
    if fold is None or not args or not all(_is_real_constant(a) for a in args):
        return build(*args)
    try:
        out = build(*args)
    except (TypeError, ValueError):
        out = None
    if out is not None and not _not_real(out):
        return out
    with np.errstate(all="ignore"):
        return number(fold(*[np.float64(float(a)) for a in args]))


def ieee_apply(func, *args):
    """``func(*args)`` for a SymPy operation (Pow, Max, a relation, exp, ...) through
    :func:`ieee` with its float64 function (:func:`fold_for`)."""
    return ieee(func, fold_for(func), *args)


def numpy_function(func) -> Callable | None:
    """The float64 function of a SymPy function class (exp, Abs, floor, asec, ...)."""
    name = _SYMPY_NAMES.get(func.__name__, func.__name__)
    return _UNARY[name][3] if name in _UNARY else None


def _product(*xs):
    out = np.float64(1.0)
    for x in xs:
        out = out * x
    return out


_NUMPY_RELATIONS = {
    sympy.StrictLessThan: np.less,
    sympy.LessThan: np.less_equal,
    sympy.StrictGreaterThan: np.greater,
    sympy.GreaterThan: np.greater_equal,
    sympy.Equality: np.equal,
    sympy.Unequality: np.not_equal,
}


def fold_for(func) -> Callable | None:
    """The float64 function of a SymPy operation (Add, Pow, Max, a relation, exp, ...), or None."""
    if func is sympy.Add:
        return lambda *xs: sum(xs, np.float64(0.0))
    if func is sympy.Mul:
        return _product
    if func is sympy.Pow:
        return np.power
    if func is sympy.Max:
        return OPS.max
    if func is sympy.Min:
        return OPS.min
    if func in _NUMPY_RELATIONS:
        return _NUMPY_RELATIONS[func]
    if isinstance(func, type) and issubclass(func, sympy.Function):
        return numpy_function(func)
    return None


def ieee_xreplace(expr, mapping: dict):
    """``expr.xreplace(mapping)``, each rebuilt operation through :func:`ieee` (so that
    substituting constants never yields zoo, an imaginary number or a NaN-comparison error)."""
    if not mapping:
        return expr
    memo: dict = {}

    def rebuild(e):
        if e in mapping:
            return mapping[e]
        if not e.args:
            return e
        if e in memo:
            return memo[e]
        args = [rebuild(a) for a in e.args]
        if all(a is b for a, b in zip(args, e.args)):
            out = e
        else:
            out = ieee_apply(e.func, *args)
        memo[e] = out
        return out

    return rebuild(expr)


# ---------------------------------------------------------------- printing
_RELATIONS = {
    sympy.StrictLessThan: "lt",
    sympy.LessThan: "le",
    sympy.StrictGreaterThan: "gt",
    sympy.GreaterThan: "ge",
    sympy.Equality: "eq",
    sympy.Unequality: "ne",
}
_LOGIC = {sympy.And: "and_", sympy.Or: "or_", sympy.Xor: "xor"}


class _Printer:
    """Python source for an expression, in calls of :data:`OPS` and arithmetic."""

    def __init__(self, names: dict[sympy.Symbol, str]):
        self.names = names

    def __call__(self, e) -> str:
        p = self
        if e in self.names:
            return self.names[e]
        if isinstance(e, sympy.Symbol):
            raise ValueError(f"unknown symbol {e} in an expression")
        if e is sympy.true or isinstance(e, sympy.logic.boolalg.BooleanTrue):
            return "True"
        if e is sympy.false or isinstance(e, sympy.logic.boolalg.BooleanFalse):
            return "False"
        if e.is_Number or e.is_NumberSymbol or e in (sympy.oo, -sympy.oo, sympy.nan, sympy.zoo):
            value = float(e)
            if math.isnan(value):
                return "_nan"
            if math.isinf(value):
                return "_inf" if value > 0 else "(-_inf)"
            return repr(value)
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(p(a) for a in e.args) + ")"
        if isinstance(e, sympy.Mul):
            num, den = [], []
            for a in e.args:
                if isinstance(a, sympy.Pow) and a.exp.is_Number and a.exp < 0:
                    den.append(a.base if a.exp == -1 else sympy.Pow(a.base, -a.exp, evaluate=False))
                else:
                    num.append(a)
            top = " * ".join(p(a) for a in num) if num else "1.0"
            if not den:
                return f"({top})"
            return f"({top} / ({' * '.join(p(a) for a in den)}))"
        if isinstance(e, sympy.Pow):
            base, ex = e.args
            if ex == -1:
                return f"(1.0 / {p(base)})"
            if ex.is_Integer and 1 <= int(ex) <= 4:
                b = p(base)
                return "(" + " * ".join([b] * int(ex)) + ")"
            if ex.is_Integer and -4 <= int(ex) <= -2:
                b = p(base)
                return "(1.0 / (" + " * ".join([b] * -int(ex)) + "))"
            return f"_m.pow({p(base)}, {p(ex)})"
        if isinstance(e, sympy.Piecewise):
            pairs = []
            otherwise = "_nan"
            for value, cond in e.args:
                if cond is sympy.true or cond == sympy.true:
                    otherwise = p(value)
                    break
                pairs.append(f"({p(cond)}, {p(value)})")
            return f"_m.piecewise({', '.join([*pairs, otherwise])})"
        for kind, name in _RELATIONS.items():
            if isinstance(e, kind):
                return f"_m.{name}({p(e.lhs)}, {p(e.rhs)})"
        for kind, name in _LOGIC.items():
            if isinstance(e, kind):
                return f"_m.{name}({', '.join(p(a) for a in e.args)})"
        if isinstance(e, sympy.Not):
            return f"_m.not_({p(e.args[0])})"
        if isinstance(e, sympy.Implies):
            return f"_m.or_(_m.not_({p(e.args[0])}), {p(e.args[1])})"
        if isinstance(e, sympy.Min | sympy.Max):
            name = "min" if isinstance(e, sympy.Min) else "max"
            return f"_m.{name}({', '.join(p(a) for a in e.args)})"
        if isinstance(e, sympy.Function):
            name = type(e).__name__
            name = _SYMPY_NAMES.get(name, name)
            if name in _UNARY and len(e.args) == 1:
                return f"_m.{name}({p(e.args[0])})"
        raise ValueError(f"no engine implements {type(e).__name__} (in {e})")


def compile_function(
    name: str,
    inputs: dict[str, Sequence[sympy.Symbol]],
    outputs: Sequence[sympy.Expr],
    *,
    returns: Sequence[str] | None = None,
) -> tuple[Callable, str]:
    """``def name(<inputs>)``: each input is a sequence (a record, a list, a tuple) whose
    items bind the given symbols in order; returns the outputs' values as a list, or as a
    dict keyed by ``returns``. Shared subexpressions are computed once. Returns the
    function and its source text (whose hash identifies the equations)."""
    names: dict[sympy.Symbol, str] = {}
    lines = [f"def {name}({', '.join(inputs)}):"]
    for group, symbols in inputs.items():
        for i, s in enumerate(symbols):
            names[s] = f"{group}_{i}"
            lines.append(f"    {group}_{i} = {group}[{i}]")
    shared, reduced = sympy.cse(list(outputs), symbols=sympy.numbered_symbols("_x"), optimizations=None)
    printer = _Printer(names)
    for s, e in shared:
        code = printer(e)
        names[s] = str(s)
        lines.append(f"    {s} = {code}")
    values = [printer(e) for e in reduced]
    if returns is None:
        lines.append(f"    return [{', '.join(values)}]")
    else:
        lines.append("    return {" + ", ".join(f"{k!r}: {v}" for k, v in zip(returns, values)) + "}")
    source = "\n".join(lines) + "\n"
    namespace: dict = {"_m": OPS, "_nan": math.nan, "_inf": math.inf}
    exec(compile(source, f"<mechinfer generated {name} {_digest(source)}>", "exec"), namespace)
    return namespace[name], source


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
