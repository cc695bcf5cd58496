"""An ODE system as SymPy expressions: what an SBML file imports to, and what every
model from a file is compiled from.

The importers (:mod:`mechinfer.models.sbml`, :mod:`mechinfer.models.petab`) produce an
:class:`OdeSystem`; :mod:`mechinfer.models.expressions` turns its expressions into
functions that run on torch tensors, dual numbers, numpy arrays and symbols (so the
native code generator, the torch solver and the scipy reference all integrate the same
equations).

Symbols: every SBML id is ``sympy.Symbol(id)`` (no assumptions); time is :data:`TIME`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy


class UnsupportedModelError(ValueError):
    """A model source uses something mechinfer does not simulate exactly (an SBML event,
    an algebraic rule, ...), or cannot be read: the message names the element and its id."""


class ModelSourceError(ValueError):
    """A model source is malformed or inconsistent (unreadable XML, a missing table, an
    unknown symbol in a formula, a prior with lowerBound >= upperBound, ...): the message
    names the file and the problem."""


# Time in expressions. Not a legal-looking SBML id, so it never collides with one.
TIME = sympy.Symbol("__time__")


def symbol(name: str) -> sympy.Symbol:
    """The symbol of an SBML/PEtab id in every expression of an :class:`OdeSystem`."""
    return sympy.Symbol(name)


@dataclass(frozen=True)
class OdeSystem:
    """dy/dt = rates(y, parameters, time), y(0) = initial(parameters).

    - ``states``: ids of the integrated variables, in order (species, parameters or
      compartments with rate rules, ...). A species' state is the quantity its id means in
      the model's math: its concentration, or its amount where hasOnlySubstanceUnits.
    - ``rates``: one expression per state in symbols of states, ``parameters`` and
      :data:`TIME`; assignment rules already substituted.
    - ``initial``: one expression per state in symbols of ``parameters`` only.
    - ``parameters``: the base constants with their values (global and renamed local
      parameters, constant compartments); a derived constant (an initial assignment of a
      parameter) is substituted, so overriding a base value (a PEtab condition, an
      estimated parameter) propagates to everything that depends on it.
    - ``outputs``: every other id that a user may ask for (assignment-rule targets,
      derived parameters, species), as an expression of states, parameters and time, in
      the units the model's math uses for it.
    - ``concentrations`` and ``amounts``: every species as its concentration and as its
      amount (expressions of states, parameters and time).
    """

    name: str
    states: tuple[str, ...]
    rates: tuple[sympy.Expr, ...]
    initial: tuple[sympy.Expr, ...]
    parameters: dict[str, float]
    outputs: dict[str, sympy.Expr] = field(default_factory=dict)
    concentrations: dict[str, sympy.Expr] = field(default_factory=dict)
    amounts: dict[str, sympy.Expr] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def value(self, name: str, amount: bool = False) -> sympy.Expr:
        """The expression of id ``name``: a species as its concentration, or as its amount
        when ``amount``; anything else as the model's math means it."""
        if name in self.concentrations:
            return self.amounts[name] if amount else self.concentrations[name]
        if amount:
            raise KeyError(f"{self.name}: {name!r} is not a species (no amount)")
        if name in self.states:
            return symbol(name)
        if name in self.outputs:
            return self.outputs[name]
        if name in self.parameters:
            return symbol(name)
        raise KeyError(f"{self.name}: no variable {name!r}")

    @property
    def uses_time(self) -> bool:
        return any(TIME in r.free_symbols for r in self.rates)
