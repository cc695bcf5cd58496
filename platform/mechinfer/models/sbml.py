"""SBML import: an SBML file (Level 2, Level 3 Version 1-2) as an :class:`OdeSystem`.

libsbml parses the file; this module walks libsbml's MathML trees into SymPy expressions
and applies SBML's semantics of the ODE subset (SPEC §11): compartments of constant size,
species in amounts or concentrations, global and reaction-local parameters, reactions with
kinetic laws and constant (numeric or initially assigned) stoichiometry, assignment rules,
rate rules, initial assignments, function definitions and the ``time`` csymbol. Anything
else raises :class:`UnsupportedModelError` naming the element and its id; an unreadable
document raises :class:`ModelSourceError`.

Semantics, as the SBML specification defines them:

- a species' symbol in the math means its concentration (amount / compartment size), or
  its amount where ``hasOnlySubstanceUnits`` is true (or where its compartment is
  0-dimensional without a size, as SBML Level 2 defines); its state is that quantity;
- a kinetic law is extensive (amount per time): d amount / dt = sum(stoichiometry * rate),
  so a concentration changes by that over its (constant) compartment size;
- boundary species are not changed by reactions; a species that nothing changes (constant,
  or boundary without a rate rule) is the constant its initial value gives;
- initial assignments and assignment rules hold at time 0; an assignment rule holds at
  every time and is substituted into every rate and output;
- a local parameter shadows a global id of the same name inside its kinetic law; it
  becomes the base parameter ``<reactionId>_<localId>`` (suffixed with ``_`` until unique).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libsbml
import numpy as np
import sympy
from sympy.logic.boolalg import BooleanAtom, BooleanFunction

from ..solver.symbolic import Acot
from .expressions import ieee, ieee_apply, ieee_xreplace, number
from .odesystem import TIME, ModelSourceError, OdeSystem, UnsupportedModelError, symbol

__all__ = ["read_sbml"]

AVOGADRO = 6.02214179e23  # the SBML Level 3 value of the avogadro csymbol

_UNARY: dict[int, Callable[[sympy.Expr], sympy.Expr]] = {
    libsbml.AST_FUNCTION_ABS: sympy.Abs,
    libsbml.AST_FUNCTION_EXP: sympy.exp,
    libsbml.AST_FUNCTION_LN: sympy.log,
    libsbml.AST_FUNCTION_FLOOR: sympy.floor,
    libsbml.AST_FUNCTION_CEILING: sympy.ceiling,
    libsbml.AST_FUNCTION_FACTORIAL: sympy.factorial,
    libsbml.AST_FUNCTION_SIN: sympy.sin,
    libsbml.AST_FUNCTION_COS: sympy.cos,
    libsbml.AST_FUNCTION_TAN: sympy.tan,
    libsbml.AST_FUNCTION_SEC: sympy.sec,
    libsbml.AST_FUNCTION_CSC: sympy.csc,
    libsbml.AST_FUNCTION_COT: sympy.cot,
    libsbml.AST_FUNCTION_SINH: sympy.sinh,
    libsbml.AST_FUNCTION_COSH: sympy.cosh,
    libsbml.AST_FUNCTION_TANH: sympy.tanh,
    libsbml.AST_FUNCTION_SECH: sympy.sech,
    libsbml.AST_FUNCTION_CSCH: sympy.csch,
    libsbml.AST_FUNCTION_COTH: sympy.coth,
    libsbml.AST_FUNCTION_ARCSIN: sympy.asin,
    libsbml.AST_FUNCTION_ARCCOS: sympy.acos,
    libsbml.AST_FUNCTION_ARCTAN: sympy.atan,
    libsbml.AST_FUNCTION_ARCSEC: sympy.asec,
    libsbml.AST_FUNCTION_ARCCSC: sympy.acsc,
    libsbml.AST_FUNCTION_ARCCOT: Acot,  # not sympy.acot: see Acot
    libsbml.AST_FUNCTION_ARCSINH: sympy.asinh,
    libsbml.AST_FUNCTION_ARCCOSH: sympy.acosh,
    libsbml.AST_FUNCTION_ARCTANH: sympy.atanh,
    libsbml.AST_FUNCTION_ARCSECH: sympy.asech,
    libsbml.AST_FUNCTION_ARCCSCH: sympy.acsch,
    libsbml.AST_FUNCTION_ARCCOTH: sympy.acoth,
}

_RELATIONAL: dict[int, Callable[[Any, Any], Any]] = {
    libsbml.AST_RELATIONAL_LT: sympy.Lt,
    libsbml.AST_RELATIONAL_LEQ: sympy.Le,
    libsbml.AST_RELATIONAL_GT: sympy.Gt,
    libsbml.AST_RELATIONAL_GEQ: sympy.Ge,
    libsbml.AST_RELATIONAL_EQ: sympy.Eq,
}


def _divide(a: Any, b: Any) -> Any:
    """a / b in IEEE 754 terms where b is a constant zero: +-inf, or nan for 0 / 0 (SymPy's
    a / 0 is zoo, complex infinity, which no engine evaluates)."""
    out = ieee(lambda x, y: x / y, np.divide, a, b)
    if isinstance(out, sympy.Expr) and out.has(sympy.zoo):  # a symbolic numerator over a zero
        return a * sympy.oo
    return out


def _root(degree: Any, x: Any) -> Any:
    return sympy.sqrt(x) if degree == 2 else sympy.Pow(x, _divide(sympy.Integer(1), degree))


def read_sbml(source: str | os.PathLike) -> OdeSystem:
    """The :class:`OdeSystem` of an SBML file (or of an SBML document given as a string that
    starts with ``<``). Raises :class:`UnsupportedModelError` for anything outside the ODE
    subset mechinfer simulates exactly, :class:`ModelSourceError` for a missing file or a
    document libsbml reports errors in."""
    doc, label = _read_document(source)
    return _Importer(doc, label).build()


# --------------------------------------------------------------------------- reading


def _read_document(source: str | os.PathLike) -> tuple[Any, str]:
    if isinstance(source, str) and source.lstrip().startswith("<"):
        label = "<SBML string>"
        doc = libsbml.readSBMLFromString(source)
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise ModelSourceError(f"{label}: no such SBML file")
        doc = libsbml.readSBMLFromFile(str(path))
    if doc is None:
        raise ModelSourceError(f"{label}: libsbml could not read the document")
    _refuse_packages(doc, label)
    for i in range(doc.getNumErrors()):
        err = doc.getError(i)
        if err.getSeverity() >= libsbml.LIBSBML_SEV_ERROR:
            message = " ".join(err.getMessage().split())
            raise ModelSourceError(f"{label}: line {err.getLine()}: {message}")
    if doc.getLevel() < 2:
        raise UnsupportedModelError(f"{label}: SBML Level {doc.getLevel()} (mechinfer reads Levels 2 and 3)")
    if doc.getModel() is None:
        raise ModelSourceError(f"{label}: the document has no model")
    return doc, label


def _refuse_packages(doc: Any, label: str) -> None:
    """An SBML Level 3 package that declares ``required="true"`` (it changes the
    mathematical meaning of the core model: comp, distrib, ...) is refused, and so is one
    unknown to libsbml that does. A package declared ``required="false"`` (layout,
    render: drawings of the network) cannot change the math, by the SBML Level 3 rule
    for that attribute, and is ignored."""
    names = []
    # Level 2 has no packages: libsbml reads layout and render from its annotations
    for i in range(doc.getNumPlugins() if doc.getLevel() >= 3 else 0):
        plugin = doc.getPlugin(i)
        name = plugin.getPackageName()
        if name == "l3v2extendedmath":
            continue  # libsbml's internal name for Level 3 Version 2 core MathML, not a package
        if name and not doc.getPackageRequired(name):
            continue
        names.append(name or plugin.getURI())
    for i in range(doc.getNumUnknownPackages()):
        uri = doc.getUnknownPackageURI(i)
        if doc.getPackageRequired(uri):
            names.append(uri)
    for i in range(doc.getNumErrors()):
        err = doc.getError(i)
        if err.getErrorId() == libsbml.RequiredPackagePresent:
            names.append(" ".join(err.getMessage().split()))
    if names:
        raise UnsupportedModelError(
            f"{label}: SBML package {names[0]!r} (packages that change the model's math are not supported)"
        )


# --------------------------------------------------------------------------- math


def _is_boolean(e: Any) -> bool:
    return isinstance(e, (BooleanAtom, BooleanFunction, sympy.core.relational.Relational))


def _num(e: Any) -> Any:
    """A value in a numeric context: a boolean is 1 or 0."""
    if e is sympy.true:
        return sympy.Integer(1)
    if e is sympy.false:
        return sympy.Integer(0)
    if _is_boolean(e):
        return sympy.Piecewise((sympy.Integer(1), e), (sympy.Integer(0), True))
    return e


def _bool(e: Any) -> Any:
    """A value in a logical context: a number is true where it is not 0."""
    if _is_boolean(e):
        return e
    return sympy.Ne(e, 0)


class _Math:
    """MathML (a libsbml ASTNode tree) to SymPy; function definitions are expanded."""

    def __init__(self, model: Any, label: str) -> None:
        self.label = label
        self.functions: dict[str, Any] = {}
        for fd in model.getListOfFunctionDefinitions():
            self.functions[fd.getId()] = fd

    def convert(self, node: Any, where: str) -> Any:
        if node is None:
            raise UnsupportedModelError(f"{self.label}: {where} has no math")
        return _num(self._walk(node, where, {}, ()))

    def _unsupported(self, what: str, where: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.label}: {where}: MathML {what} is not supported")

    def _walk(self, node: Any, where: str, env: dict[str, Any], stack: tuple[str, ...]) -> Any:
        t = node.getType()
        kids = [node.getChild(i) for i in range(node.getNumChildren())]
        walk = lambda k: self._walk(k, where, env, stack)
        nums = lambda: [_num(walk(k)) for k in kids]

        if t == libsbml.AST_INTEGER:
            return sympy.Integer(node.getInteger())
        if t == libsbml.AST_RATIONAL:
            return sympy.Rational(node.getNumerator(), node.getDenominator())
        if t in (libsbml.AST_REAL, libsbml.AST_REAL_E):
            return number(node.getReal())
        if t == libsbml.AST_NAME:
            name = node.getName()
            return env[name] if name in env else symbol(name)
        if t == libsbml.AST_NAME_TIME:
            return TIME
        if t == libsbml.AST_NAME_AVOGADRO:
            return sympy.Float(AVOGADRO)
        if t == libsbml.AST_CONSTANT_PI:
            return sympy.pi
        if t == libsbml.AST_CONSTANT_E:
            return sympy.E
        if t == libsbml.AST_CONSTANT_TRUE:
            return sympy.true
        if t == libsbml.AST_CONSTANT_FALSE:
            return sympy.false
        if t == libsbml.AST_PLUS:
            return sympy.Add(*nums()) if kids else sympy.Integer(0)
        if t == libsbml.AST_TIMES:
            return sympy.Mul(*nums()) if kids else sympy.Integer(1)
        if t == libsbml.AST_MINUS:
            args = nums()
            if len(args) == 1:
                return -args[0]
            if len(args) == 2:
                return args[0] - args[1]
            raise self._unsupported(f"minus with {len(args)} arguments", where)
        if t == libsbml.AST_DIVIDE:
            a, b = self._arity(nums(), 2, "divide", where)
            return _divide(a, b)
        if t in (libsbml.AST_POWER, libsbml.AST_FUNCTION_POWER):
            a, b = self._arity(nums(), 2, "power", where)
            return ieee_apply(sympy.Pow, a, b)
        if t == libsbml.AST_FUNCTION_ROOT:
            args = nums()
            if len(args) == 1:
                return ieee(sympy.sqrt, np.sqrt, args[0])
            degree, x = self._arity(args, 2, "root", where)
            return ieee(_root, lambda d, v: np.sqrt(v) if d == 2 else np.power(v, 1.0 / d), degree, x)
        if t == libsbml.AST_FUNCTION_LOG:
            args = nums()
            if len(args) == 1:
                return ieee(lambda v: sympy.log(v, 10), np.log10, args[0])
            base, x = self._arity(args, 2, "log", where)
            return ieee(lambda b, v: sympy.log(v, b), lambda b, v: np.log(v) / np.log(b), base, x)
        if t in _UNARY:
            (x,) = self._arity(nums(), 1, node.getName() or "function", where)
            return ieee_apply(_UNARY[t], x)
        if t == libsbml.AST_FUNCTION_MAX:
            return ieee_apply(sympy.Max, *nums()) if kids else -sympy.oo
        if t == libsbml.AST_FUNCTION_MIN:
            return ieee_apply(sympy.Min, *nums()) if kids else sympy.oo
        if t == libsbml.AST_FUNCTION_QUOTIENT:
            a, b = self._arity(nums(), 2, "quotient", where)
            return _trunc(_divide(a, b))
        if t == libsbml.AST_FUNCTION_REM:
            a, b = self._arity(nums(), 2, "rem", where)
            return a - b * _trunc(_divide(a, b))
        if t == libsbml.AST_FUNCTION_PIECEWISE:
            return self._piecewise([walk(k) for k in kids], where)
        if t in _RELATIONAL:
            args = nums()
            if len(args) < 2:
                raise self._unsupported(f"{node.getName()} with {len(args)} arguments", where)
            return sympy.And(*[ieee_apply(_RELATIONAL[t], a, b) for a, b in itertools.pairwise(args)])
        if t == libsbml.AST_RELATIONAL_NEQ:
            a, b = self._arity(nums(), 2, "neq", where)
            return ieee_apply(sympy.Ne, a, b)
        if t == libsbml.AST_LOGICAL_AND:
            return sympy.And(*[_bool(walk(k)) for k in kids])
        if t == libsbml.AST_LOGICAL_OR:
            return sympy.Or(*[_bool(walk(k)) for k in kids])
        if t == libsbml.AST_LOGICAL_XOR:
            return sympy.Xor(*[_bool(walk(k)) for k in kids])
        if t == libsbml.AST_LOGICAL_NOT:
            (x,) = self._arity([_bool(walk(k)) for k in kids], 1, "not", where)
            return sympy.Not(x)
        if t == libsbml.AST_LOGICAL_IMPLIES:
            a, b = self._arity([_bool(walk(k)) for k in kids], 2, "implies", where)
            return sympy.Implies(a, b)
        if t == libsbml.AST_FUNCTION:
            return self._call(node.getName(), [walk(k) for k in kids], where, stack)
        if t == libsbml.AST_FUNCTION_DELAY:
            raise UnsupportedModelError(f"{self.label}: {where}: the delay csymbol is not supported")
        if t == libsbml.AST_FUNCTION_RATE_OF:
            raise UnsupportedModelError(f"{self.label}: {where}: the rateOf csymbol is not supported")
        raise self._unsupported(repr(node.getName() or f"element of libsbml AST type {t}"), where)

    def _arity(self, args: list[Any], n: int, what: str, where: str) -> list[Any]:
        if len(args) != n:
            raise self._unsupported(f"{what} with {len(args)} arguments", where)
        return args

    def _piecewise(self, args: list[Any], where: str) -> Any:
        pieces = []
        for i in range(0, len(args) - 1, 2):
            pieces.append((args[i], _bool(args[i + 1])))
        otherwise = args[-1] if len(args) % 2 == 1 else sympy.nan
        # always numeric (a boolean piece is 1 or 0; a logical context tests it against 0)
        pieces = [(_num(v), c) for v, c in pieces]
        pieces.append((_num(otherwise), sympy.true))
        return sympy.Piecewise(*pieces)

    def _call(self, name: str, args: list[Any], where: str, stack: tuple[str, ...]) -> Any:
        fd = self.functions.get(name)
        if fd is None:
            raise ModelSourceError(f"{self.label}: {where}: call of an undefined function {name!r}")
        if name in stack:
            raise ModelSourceError(f"{self.label}: functionDefinition {name!r} is recursive")
        lam = fd.getMath()
        if lam is None or lam.getType() != libsbml.AST_LAMBDA:
            raise ModelSourceError(f"{self.label}: functionDefinition {name!r} has no lambda")
        nb = lam.getNumBvars()
        if nb != len(args):
            raise ModelSourceError(f"{self.label}: {where}: {name!r} takes {nb} arguments, called with {len(args)}")
        env = {lam.getChild(i).getName(): a for i, a in enumerate(args)}
        body = fd.getBody()
        if body is None:
            raise ModelSourceError(f"{self.label}: functionDefinition {name!r} has no body")
        return self._walk(body, f"functionDefinition {name!r}", env, (*stack, name))


def _trunc(x: Any) -> Any:
    """MathML quotient: the integer part of x, rounded towards zero."""
    return sympy.Piecewise((sympy.floor(x), x >= 0), (sympy.ceiling(x), True))


# --------------------------------------------------------------------------- semantics


@dataclass
class _Species:
    id: str
    compartment: str
    amount_units: bool  # its symbol means its amount (hOSU, or an unsized 0-D compartment)
    unsized: bool  # in a 0-D compartment without a size: concentration = amount
    boundary: bool
    constant: bool
    initial: Any  # the initial value of what its symbol means, in raw symbols, or None


@dataclass
class _Reaction:
    id: str
    rate: Any  # extensive rate, raw symbols (locals renamed)
    changes: list[tuple[str, Any]]  # (species, signed stoichiometry in raw symbols)


class _Importer:
    def __init__(self, doc: Any, label: str) -> None:
        self.doc = doc
        self.label = label
        self.model = doc.getModel()
        self.math = _Math(self.model, label)
        # raw definitions (expressions in raw SBML symbols)
        self.base: dict[str, float] = {}
        self.species: dict[str, _Species] = {}
        self.compartments: dict[str, Any] = {}  # id -> libsbml Compartment
        self.param_value: dict[str, float | None] = {}
        self.initial_assignments: dict[str, Any] = {}
        self.assignment_rules: dict[str, Any] = {}
        self.rate_rules: dict[str, Any] = {}
        self.reactions: dict[str, _Reaction] = {}
        self.species_refs: dict[str, Any] = {}  # speciesReference id -> constant stoichiometry (raw)
        self.states: list[str] = []
        self._memo: dict[tuple[str, str], Any] = {}
        self._active: list[tuple[str, str]] = []

    def fail(self, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.label}: {what} is not supported")

    # ------------------------------------------------------------------ reading
    def build(self) -> OdeSystem:
        self._refuse_model_level()
        self._read_rules()
        self._read_compartments()
        self._read_species()
        self._read_parameters()
        self._read_reactions()
        self._classify()
        self._constant_species_as_parameters()
        return self._assemble()

    def _constant_species_as_parameters(self) -> None:
        """A species that nothing changes (constant, or boundary without a rule), set by a
        plain number (not an expression, not an initial assignment), is a base constant
        like a parameter: a PEtab condition may set it (an input ligand's concentration),
        and its value reaches every expression that reads it."""
        for sid, sp in self.species.items():
            if sid in self.states or sid in self.assignment_rules or sid in self.initial_assignments:
                continue
            if sp.initial is not None and sp.initial.is_Number:
                self.base[sid] = float(sp.initial)

    def _refuse_model_level(self) -> None:
        m = self.model
        if m.getNumEvents():
            ev = m.getEvent(0)
            raise self.fail(f"event {_ident(ev, 0)}")
        if m.isSetConversionFactor():
            raise self.fail(f"conversionFactor {m.getConversionFactor()!r} of model {m.getId()!r}")
        for i in range(m.getNumRules()):
            rule = m.getRule(i)
            if rule.isAlgebraic():
                raise self.fail(f"algebraicRule {_ident(rule, i)}")

    def _read_rules(self) -> None:
        m = self.model
        for i in range(m.getNumInitialAssignments()):
            ia = m.getInitialAssignment(i)
            target = ia.getSymbol()
            if ia.getMath() is None:
                continue  # SBML L3V2: an initialAssignment without math assigns nothing
            self.initial_assignments[target] = self.math.convert(ia.getMath(), f"initialAssignment to {target!r}")
        for i in range(m.getNumRules()):
            rule = m.getRule(i)
            target = rule.getVariable()
            if rule.getMath() is None:
                continue  # SBML L3V2: a rule without math does nothing
            if rule.isAssignment():
                self.assignment_rules[target] = self.math.convert(rule.getMath(), f"assignmentRule for {target!r}")
            elif rule.isRate():
                self.rate_rules[target] = self.math.convert(rule.getMath(), f"rateRule for {target!r}")

    def _read_compartments(self) -> None:
        for c in self.model.getListOfCompartments():
            cid = c.getId()
            self.compartments[cid] = c
            if cid in self.rate_rules:
                raise self.fail(f"non-constant compartment {cid!r} (rateRule)")
            if cid in self.assignment_rules or cid in self.initial_assignments:
                continue  # an assignment rule of a constant value is checked in _classify
            if c.isSetSize():
                self.base[cid] = float(c.getSize())

    def _read_species(self) -> None:
        for s in self.model.getListOfSpecies():
            sid = s.getId()
            if s.isSetConversionFactor():
                raise self.fail(f"conversionFactor {s.getConversionFactor()!r} of species {sid!r}")
            cid = s.getCompartment()
            comp = self.compartments.get(cid)
            if comp is None:
                raise ModelSourceError(f"{self.label}: species {sid!r} is in an undefined compartment {cid!r}")
            unsized = (
                comp.getSpatialDimensionsAsDouble() == 0
                and not comp.isSetSize()
                and cid not in self.initial_assignments
                and cid not in self.assignment_rules
            )
            amount_units = bool(s.getHasOnlySubstanceUnits()) or unsized
            if s.isSetInitialAmount():
                value = number(s.getInitialAmount())
                initial = value if amount_units else value / symbol(cid)
            elif s.isSetInitialConcentration():
                value = number(s.getInitialConcentration())
                initial = value * symbol(cid) if amount_units and not unsized else value
            else:
                initial = None
            self.species[sid] = _Species(
                sid, cid, amount_units, unsized, bool(s.getBoundaryCondition()), bool(s.getConstant()), initial
            )

    def _read_parameters(self) -> None:
        for p in self.model.getListOfParameters():
            pid = p.getId()
            value = float(p.getValue()) if p.isSetValue() else None
            self.param_value[pid] = value
            if pid in self.assignment_rules or pid in self.initial_assignments or pid in self.rate_rules:
                continue
            if value is None:
                raise self.fail(f"parameter {pid!r} without a value (no value, initialAssignment or rule)")
            self.base[pid] = value

    def _all_ids(self) -> set[str]:
        ids: set[str] = set()
        elements = self.model.getListOfAllElements()
        for i in range(elements.getSize()):
            el = elements.get(i)
            if el.isSetId():
                ids.add(el.getId())
        return ids

    def _read_reactions(self) -> None:
        taken = self._all_ids()
        for r in self.model.getListOfReactions():
            rid = r.getId()
            if r.isSetFast() and r.getFast():
                raise self.fail(f"fast reaction {rid!r}")
            kl = r.getKineticLaw()
            if kl is None or kl.getMath() is None:
                raise self.fail(f"reaction {rid!r} without a kineticLaw")
            rate = self.math.convert(kl.getMath(), f"kineticLaw of reaction {rid!r}")
            local = kl.getListOfLocalParameters() if self.doc.getLevel() >= 3 else kl.getListOfParameters()
            renames = {}
            for p in local:
                lid = p.getId()
                if not p.isSetValue():
                    raise self.fail(f"local parameter {lid!r} of reaction {rid!r} without a value")
                new = f"{rid}_{lid}"
                while new in taken:
                    new += "_"
                taken.add(new)
                renames[symbol(lid)] = symbol(new)
                self.base[new] = float(p.getValue())
            rate = rate.xreplace(renames)
            changes: list[tuple[str, Any]] = []
            for sign, refs in ((-1, r.getListOfReactants()), (1, r.getListOfProducts())):
                for ref in refs:
                    changes.append((ref.getSpecies(), sign * self._stoichiometry(ref, rid)))
            self.reactions[rid] = _Reaction(rid, rate, changes)

    def _stoichiometry(self, ref: Any, rid: str) -> Any:
        sid = ref.getSpecies()
        ref_id = ref.getId() if ref.isSetId() else None
        what = f"speciesReference {repr(ref_id) + ' ' if ref_id else ''}to {sid!r} in reaction {rid!r}"
        if self.doc.getLevel() < 3 and ref.isSetStoichiometryMath():
            raise self.fail(f"stoichiometryMath of {what}")
        # constant="false" alone changes nothing: without events, only a rule could change
        # a stoichiometry in time, and a rule targeting a speciesReference is refused
        if ref_id and ref_id in self.rate_rules:
            raise self.fail(f"variable stoichiometry (rateRule) of {what}")
        if ref_id and ref_id in self.assignment_rules:
            value = self.assignment_rules[ref_id]  # _classify checks that it is a constant
        elif ref_id and ref_id in self.initial_assignments:
            value = self.initial_assignments[ref_id]
        elif ref.isSetStoichiometry() or self.doc.getLevel() < 3:
            value = number(ref.getStoichiometry())
            if self.doc.getLevel() < 3 and ref.getDenominator() != 1:
                value = value / ref.getDenominator()
        else:
            raise self.fail(f"{what} without a stoichiometry")
        if ref_id:
            self.species_refs[ref_id] = value
        return symbol(ref_id) if ref_id else value

    # ------------------------------------------------------------------ semantics
    def _classify(self) -> None:
        reacting: set[str] = set()
        for reaction in self.reactions.values():
            for sid, _ in reaction.changes:
                if sid not in self.species:
                    raise ModelSourceError(
                        f"{self.label}: reaction {reaction.id!r} refers to undefined species {sid!r}"
                    )
                reacting.add(sid)
        for sid, sp in self.species.items():
            ruled = sid in self.assignment_rules or sid in self.rate_rules
            if sp.constant and (ruled or (sid in reacting and not sp.boundary)):
                raise ModelSourceError(f"{self.label}: constant species {sid!r} is changed by a rule or reaction")
            if ruled and sid in reacting and not sp.boundary:
                raise ModelSourceError(
                    f"{self.label}: species {sid!r} is set by a rule and changed by a reaction "
                    "(boundaryCondition false)"
                )
            if sid in self.rate_rules or (not ruled and not sp.constant and not sp.boundary):
                self.states.append(sid)
        for pid in self.param_value:
            if pid in self.rate_rules:
                self.states.append(pid)
        for target in self.rate_rules:
            if target not in self.species and target not in self.param_value and target not in self.compartments:
                raise ModelSourceError(f"{self.label}: rateRule for an undefined id {target!r}")
        for target in self.assignment_rules:
            known = (target in self.species) or (target in self.param_value) or (target in self.compartments)
            if not known and target not in self.species_refs:
                raise ModelSourceError(f"{self.label}: assignmentRule for an undefined id {target!r}")
        # an assignment rule of a constant value keeps a compartment or a stoichiometry constant
        base = set(map(symbol, self.base))
        for cid in self.compartments:
            if cid in self.assignment_rules and not self.dyn(cid).free_symbols <= base:
                raise self.fail(f"non-constant compartment {cid!r} (its assignmentRule changes in time)")
        for ref_id in self.species_refs:
            if ref_id in self.assignment_rules and not self.dyn(ref_id).free_symbols <= base:
                raise self.fail(
                    f"variable stoichiometry of speciesReference {ref_id!r} (its assignmentRule changes in time)"
                )

    def _raw(self, name: str, mode: str) -> Any:
        """The defining expression of ``name`` in raw symbols, or None for a symbol that
        stays (a state in dynamic mode, a base parameter)."""
        if name in self.base:
            return None
        if name in self.assignment_rules:
            return self.assignment_rules[name]
        if mode == "dyn" and name in self.states:
            return None
        if name in self.initial_assignments:
            return self.initial_assignments[name]
        if name in self.species:
            sp = self.species[name]
            if sp.initial is None:
                raise self.fail(f"species {name!r} without an initial value")
            return sp.initial
        if name in self.param_value:
            value = self.param_value[name]
            if value is None:
                raise self.fail(f"parameter {name!r} without a value")
            return number(value)
        if name in self.reactions:
            return self.reactions[name].rate
        if name in self.species_refs:
            return self.species_refs[name]
        if name in self.compartments:
            raise self.fail(f"compartment {name!r} without a size")
        raise ModelSourceError(f"{self.label}: the math refers to an undefined id {name!r}")

    def _resolve(self, name: str, mode: str) -> Any:
        key = (name, mode)
        if key in self._memo:
            return self._memo[key]
        if key in self._active:
            cycle = " -> ".join(n for n, _ in self._active[self._active.index(key) :])
            raise ModelSourceError(f"{self.label}: circular definitions: {cycle} -> {name}")
        self._active.append(key)
        try:
            raw = self._raw(name, mode)
            if raw is None:
                out = symbol(name)
            else:
                # a quantity's initial value is a constant: it resolves in initial mode
                constant = name not in self.assignment_rules and name not in self.reactions
                out = self.substitute(raw, "init" if constant else mode)
        finally:
            self._active.pop()
        self._memo[key] = out
        return out

    def substitute(self, expr: Any, mode: str) -> Any:
        mapping = {s: self._resolve(s.name, mode) for s in expr.free_symbols if s != TIME}
        out = ieee_xreplace(expr, mapping)
        if mode == "init":
            out = ieee_xreplace(out, {TIME: sympy.Integer(0)})
        return out

    def dyn(self, name: str) -> Any:
        return self._resolve(name, "dyn")

    def init(self, name: str) -> Any:
        return self._resolve(name, "init")

    # ------------------------------------------------------------------ assembling
    def _assemble(self) -> OdeSystem:
        rates = []
        for sid in self.states:
            if sid in self.rate_rules:
                rates.append(self.substitute(self.rate_rules[sid], "dyn"))
                continue
            sp = self.species[sid]
            total = sympy.Integer(0)
            for reaction in self.reactions.values():
                for target, stoich in reaction.changes:
                    if target == sid:
                        total += self.substitute(stoich, "init") * self.dyn(reaction.id)
            rates.append(total if sp.amount_units else total / self.dyn(sp.compartment))
        base = set(map(symbol, self.base))
        initial = []
        for sid in self.states:
            value = self.init(sid)
            if not value.free_symbols <= base:
                raise ModelSourceError(f"{self.label}: the initial value of {sid!r} is not a constant: {value}")
            initial.append(value)

        concentrations: dict[str, Any] = {}
        amounts: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        for sid, sp in self.species.items():
            meaning = self.dyn(sid)
            size = sympy.Integer(1) if sp.unsized else self.dyn(sp.compartment)
            if sp.amount_units:
                amounts[sid], concentrations[sid] = meaning, meaning / size
            else:
                concentrations[sid], amounts[sid] = meaning, meaning * size
            if sid not in self.states:
                outputs[sid] = meaning
        others = [*self.compartments, *self.param_value, *self.reactions, *self.species_refs]
        for name in others:
            if name not in self.states and name not in self.base and name not in outputs:
                unsized = name not in self.assignment_rules and name not in self.initial_assignments
                if name in self.compartments and unsized:
                    continue  # an unsized 0-D compartment: nothing to report
                outputs[name] = self.dyn(name)
        model = self.model
        name = model.getId() or (Path(self.label).stem if not self.label.startswith("<") else "sbml")
        return OdeSystem(
            name=name,
            states=tuple(self.states),
            rates=tuple(rates),
            initial=tuple(initial),
            parameters=dict(self.base),
            outputs=outputs,
            concentrations=concentrations,
            amounts=amounts,
        )


def _ident(element: Any, index: int) -> str:
    """How a message names an SBML element: its id, else its metaid, else its position."""
    if element.isSetIdAttribute():  # (a rule's getId() is its variable)
        return repr(element.getIdAttribute())
    if element.isSetMetaId():
        return f"(metaid {element.getMetaId()!r})"
    return f"#{index + 1}"
