"""The SBML importer (mechinfer.models.sbml): vendored SBML Test Suite cases through the
test-side scipy reference, the OdeSystem it builds, and its refusals. Fast: no Ray."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import sympy
from sbml_cases import case_folders, load_case, run_case
from sbml_reference import simulate_reference

from mechinfer.models.odesystem import TIME, ModelSourceError, UnsupportedModelError, symbol
from mechinfer.models.sbml import read_sbml

CASES = Path(__file__).parent / "data" / "sbml-test-suite" / "cases"
MATH = 'xmlns="http://www.w3.org/1998/Math/MathML"'


def reference_engine(path, times, variables, amounts):
    with warnings.catch_warnings():  # numpy warns on piecewise branches it does not take
        warnings.simplefilter("ignore", RuntimeWarning)
        return simulate_reference(read_sbml(path), times, variables, amounts)


def _levels():
    for folder in case_folders(CASES):
        yield pytest.param(folder, "l3v2", id=f"{folder.name}-l3v2")
        if (folder / f"{folder.name}-sbml-l2v4.xml").is_file():
            yield pytest.param(folder, "l2v4", id=f"{folder.name}-l2v4")


def test_vendored_cases_present():
    assert len(case_folders(CASES)) >= 60
    assert (CASES.parent / "LICENSE.txt").is_file()


@pytest.mark.parametrize(("folder", "level"), list(_levels()))
def test_sbml_test_suite_case(folder, level):
    outcome = run_case(load_case(folder, level), reference_engine)
    assert outcome.status == "pass", outcome.detail


# --------------------------------------------------------------------------- inline models


def sbml(body: str, *, level: int = 3, version: int = 2, model_attrs: str = "", ns: str = "") -> str:
    """A document around ``body`` (model content), with compartment C, species S and
    parameter k unless the body brings its own lists."""
    if level == 3:
        head = f'<sbml xmlns="http://www.sbml.org/sbml/level3/version{version}/core" level="3" version="{version}"{ns}>'
    else:
        head = f'<sbml xmlns="http://www.sbml.org/sbml/level2/version4" level="2" version="4"{ns}>'
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{head}\n<model id="m"{model_attrs}>\n{body}\n</model>\n</sbml>\n'


UNITS = 'hasOnlySubstanceUnits="false" boundaryCondition="false" constant="false"'  # L3 species attributes
BASE = f"""
<listOfCompartments><compartment id="C" spatialDimensions="3" size="2" constant="true"/></listOfCompartments>
<listOfSpecies><species id="S" compartment="C" initialConcentration="1" {UNITS}/></listOfSpecies>
<listOfParameters><parameter id="k" value="0.5" constant="true"/></listOfParameters>
"""


def reaction(rate: str = "<apply><times/><ci>k</ci><ci>S</ci></apply>", attrs: str = "", ref: str = "") -> str:
    return f"""<listOfReactions><reaction id="R1" reversible="false"{attrs}>
<listOfReactants><speciesReference species="S" stoichiometry="1" constant="true"{ref}/></listOfReactants>
<kineticLaw><math {MATH}>{rate}</math></kineticLaw></reaction></listOfReactions>"""


def refused(doc: str, *words: str) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        read_sbml(doc)
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def test_reads_a_simple_model(tmp_path):
    path = tmp_path / "decay.xml"
    path.write_text(sbml(BASE + reaction()))
    system = read_sbml(path)
    assert system.states == ("S",)
    assert system.parameters == {"C": 2.0, "k": 0.5}
    # extensive rate k*S (amount/time) over the compartment size: d[S]/dt = -k*S*... / C
    assert sympy.simplify(system.rates[0] - (-symbol("k") * symbol("S") / symbol("C"))) == 0
    assert system.value("S", amount=True) == symbol("S") * symbol("C")
    y = simulate_reference(system, [0.0, 1.0], ["S", "k"], amounts=["S"])
    assert y[0, 0] == pytest.approx(2.0)
    assert y[1, 0] == pytest.approx(2.0 * float(sympy.exp(-0.25)), rel=1e-8)


def test_local_parameters_initial_assignments_and_rules():
    body = f"""
<listOfCompartments><compartment id="C" spatialDimensions="3" size="1" constant="true"/></listOfCompartments>
<listOfSpecies><species id="S" compartment="C" initialAmount="3" hasOnlySubstanceUnits="true"
  boundaryCondition="false" constant="false"/></listOfSpecies>
<listOfParameters>
  <parameter id="k" value="7" constant="true"/>
  <parameter id="d" constant="true"/>
  <parameter id="a" constant="false"/>
</listOfParameters>
<listOfInitialAssignments>
  <initialAssignment symbol="d"><math {MATH}><apply><times/><cn>2</cn><ci>S</ci></apply></math></initialAssignment>
</listOfInitialAssignments>
<listOfRules>
  <assignmentRule variable="a"><math {MATH}><apply><plus/><ci>d</ci><csymbol encoding="text"
    definitionURL="http://www.sbml.org/sbml/symbols/time">t</csymbol></apply></math></assignmentRule>
</listOfRules>
<listOfReactions><reaction id="R1" reversible="false">
  <listOfReactants><speciesReference species="S" stoichiometry="1" constant="true"/></listOfReactants>
  <kineticLaw><math {MATH}><apply><times/><ci>k</ci><ci>S</ci></apply></math>
    <listOfLocalParameters><localParameter id="k" value="0.1"/></listOfLocalParameters></kineticLaw>
</reaction></listOfReactions>"""
    system = read_sbml(sbml(body))
    assert system.parameters == {"C": 1.0, "k": 7.0, "R1_k": 0.1}  # d is derived: not a base constant
    assert system.rates == (-symbol("R1_k") * symbol("S"),)  # the local k shadows the global one
    assert system.outputs["d"] == 6
    assert system.outputs["a"] == 6 + TIME
    assert system.value("S", amount=True) == symbol("S")  # hasOnlySubstanceUnits: the state is the amount
    assert system.value("S") == symbol("S") / symbol("C")


# --------------------------------------------------------------------------- refusals

TIME_CSYMBOL = '<csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/time">t</csymbol>'


def test_refuses_an_event():
    event = f"""<listOfEvents><event id="ev1" useValuesFromTriggerTime="true">
<trigger initialValue="true" persistent="true">
<math {MATH}><apply><gt/>{TIME_CSYMBOL}<cn>1</cn></apply></math></trigger>
<listOfEventAssignments><eventAssignment variable="S"><math {MATH}><cn>1</cn></math></eventAssignment>
</listOfEventAssignments></event></listOfEvents>"""
    refused(sbml(BASE + reaction() + event), "event", "'ev1'")


def test_refuses_an_algebraic_rule():
    body = BASE.replace('constant="true"/></listOfParameters>', 'constant="false"/></listOfParameters>')
    rules = f"""<listOfRules><algebraicRule id="alg1"><math {MATH}>
<apply><minus/><ci>k</ci><cn>1</cn></apply></math></algebraicRule></listOfRules>"""
    refused(sbml(body + rules), "algebraicRule", "'alg1'")


def test_refuses_a_delay():
    delay = (
        '<apply><csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/delay">delay</csymbol>'
        "<ci>S</ci><cn>1</cn></apply>"
    )
    refused(sbml(BASE + reaction(rate=delay)), "delay", "reaction 'R1'")


def test_refuses_rate_of():
    rate_of = (
        '<apply><csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/rateOf">rateOf</csymbol>'
        "<ci>S</ci></apply>"
    )
    rules = f'<listOfRules><assignmentRule variable="k"><math {MATH}>{rate_of}</math></assignmentRule></listOfRules>'
    body = BASE.replace('constant="true"/></listOfParameters>', 'constant="false"/></listOfParameters>')
    refused(sbml(body + rules), "rateOf", "'k'")


def test_refuses_a_fast_reaction():
    # `fast` exists up to Level 3 Version 1
    refused(sbml(BASE + reaction(attrs=' fast="true"'), version=1), "fast reaction", "'R1'")


def test_refuses_a_non_constant_compartment():
    body = BASE.replace('size="2" constant="true"', 'size="2" constant="false"')
    rules = f'<listOfRules><rateRule variable="C"><math {MATH}><cn>0.1</cn></math></rateRule></listOfRules>'
    refused(sbml(body + rules + reaction()), "non-constant compartment", "'C'")
    rules = (
        f'<listOfRules><assignmentRule variable="C"><math {MATH}>{TIME_CSYMBOL}</math></assignmentRule></listOfRules>'
    )
    refused(sbml(body + rules + reaction()), "non-constant compartment", "'C'")


def test_refuses_variable_stoichiometry():
    l2 = """
<listOfCompartments><compartment id="C" size="1"/></listOfCompartments>
<listOfSpecies><species id="S" compartment="C" initialConcentration="1"/></listOfSpecies>
<listOfParameters><parameter id="k" value="0.5"/></listOfParameters>
<listOfReactions><reaction id="R1" reversible="false">
<listOfReactants><speciesReference species="S"><stoichiometryMath><math {MATH}><cn>2</cn></math></stoichiometryMath>
</speciesReference></listOfReactants>
<kineticLaw><math {MATH}><ci>k</ci></math></kineticLaw></reaction></listOfReactions>""".replace("{MATH}", MATH)
    refused(sbml(l2, level=2), "stoichiometryMath", "'S'", "'R1'")
    # a speciesReference whose assignment rule changes in time
    rules = (
        f'<listOfRules><assignmentRule variable="sr1"><math {MATH}>{TIME_CSYMBOL}</math></assignmentRule></listOfRules>'
    )
    doc = sbml(
        BASE + rules + reaction(ref=' id="sr1"').replace('constant="true" id="sr1"', 'constant="false" id="sr1"')
    )
    refused(doc, "stoichiometry", "'sr1'")


def test_refuses_conversion_factors():
    body = BASE.replace("</listOfParameters>", '<parameter id="cf" value="2" constant="true"/></listOfParameters>')
    refused(sbml(body + reaction(), model_attrs=' conversionFactor="cf"'), "conversionFactor", "'cf'")
    species = body.replace('<species id="S" compartment="C"', '<species id="S" compartment="C" conversionFactor="cf"')
    refused(sbml(species + reaction()), "conversionFactor", "species 'S'")


def test_refuses_sbml_packages():
    comp = ' xmlns:comp="http://www.sbml.org/sbml/level3/version1/comp/version1" comp:required="true"'
    l3v1 = BASE + reaction(attrs=' fast="false"')
    refused(sbml(l3v1, version=1, ns=comp), "package", "comp")
    unknown = ' xmlns:foo="http://www.sbml.org/sbml/level3/version1/foo/version1" foo:required="true"'
    refused(sbml(l3v1, version=1, ns=unknown), "package", "foo")


def test_refuses_unsupported_mathml():
    rate = "<apply><ci>undefined_function</ci><ci>S</ci></apply>"
    with pytest.raises(ModelSourceError, match="undefined_function"):
        read_sbml(sbml(BASE + reaction(rate=rate)))


def test_malformed_and_missing_sources(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text(sbml(BASE + reaction()).replace("</model>", ""))
    with pytest.raises(ModelSourceError, match="bad.xml"):
        read_sbml(bad)
    with pytest.raises(ModelSourceError, match="nothing.xml"):
        read_sbml(tmp_path / "nothing.xml")
    # a document libsbml reports errors in: a reaction referring to an undefined species
    undefined = sbml(BASE + reaction().replace('species="S"', 'species="X"'))
    with pytest.raises(ModelSourceError):
        read_sbml(undefined)


# --------------------------------------------------------------------------- the package's engine
def mechinfer_engine(path, times, variables, amounts):
    import mechinfer

    return mechinfer.simulate_sbml(path, times, variables, amounts=amounts)


def _l3v2():
    return [pytest.param(folder, id=folder.name) for folder in case_folders(CASES)]


@pytest.mark.parametrize("folder", _l3v2())
def test_simulate_sbml_passes_every_vendored_case(folder):
    """The package's own engine (``mechinfer.simulate_sbml``, the torch backend), not the
    test-side reference: every vendored case passes (about 0.2 s a case)."""
    outcome = run_case(load_case(folder, "l3v2"), mechinfer_engine)
    assert outcome.status == "pass", outcome.detail


@pytest.mark.slow
def test_native_and_torch_backends_agree_on_an_imported_model():
    """One file's equations through the generated native code and the torch steps: the
    same algorithm, so the same numbers to round-off (a case with piecewise rates in time)."""
    import mechinfer

    case = load_case(CASES / "00959", "l3v2")
    kwargs = {"amounts": case.amounts, "rtol": 1e-8, "atol": 1e-12}
    native = mechinfer.simulate_sbml(case.model, case.times, case.variables, backend="native", **kwargs)
    torch_ = mechinfer.simulate_sbml(case.model, case.times, case.variables, backend="torch", **kwargs)
    scale = abs(torch_).max()
    assert abs(native - torch_).max() <= 1e-9 * scale


def test_packages_declared_not_required_are_ignored():
    layout = ' xmlns:layout="http://www.sbml.org/sbml/level3/version1/layout/version1" layout:required="false"'
    system = read_sbml(sbml(BASE + reaction(attrs=' fast="false"'), version=1, ns=layout))
    assert system.states == ("S",)


FAST_INFLOW = f"""
<listOfCompartments><compartment id="C" spatialDimensions="3" size="1" constant="true"/></listOfCompartments>
<listOfSpecies>
  <species id="T" compartment="C" initialConcentration="1e6" {UNITS}/>
  <species id="V" compartment="C" initialConcentration="0" {UNITS}/>
</listOfSpecies>
<listOfParameters>
  <parameter id="kp" value="2e8" constant="true"/><parameter id="d" value="30" constant="true"/>
  <parameter id="kT" value="0.01" constant="true"/>
</listOfParameters>
<listOfReactions>
  <reaction id="inflow" reversible="false"><listOfProducts><speciesReference species="V" stoichiometry="1"
    constant="true"/></listOfProducts><kineticLaw><math {MATH}><ci>kp</ci></math></kineticLaw></reaction>
  <reaction id="clearance" reversible="false"><listOfReactants><speciesReference species="V" stoichiometry="1"
    constant="true"/></listOfReactants><kineticLaw><math {MATH}><apply><times/><ci>d</ci><ci>V</ci></apply>
    </math></kineticLaw></reaction>
  <reaction id="decay" reversible="false"><listOfReactants><speciesReference species="T" stoichiometry="1"
    constant="true"/></listOfReactants><kineticLaw><math {MATH}><apply><times/><ci>kT</ci><ci>T</ci></apply>
    </math></kineticLaw></reaction>
</listOfReactions>"""


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=pytest.mark.slow)])
def test_a_state_fed_fast_from_zero_beside_a_large_one(tmp_path, backend):
    """V starts at 0 with an inflow of 2e8 a day beside T = 1e6, at atol 1e-10 (a PEtab
    problem's): the first step's estimate from the state and its derivative alone was
    5e-13, below the smallest step, and the solve failed before its first step (Perelson's
    HIV model, every prior draw with a clearance above 25 a day). Against the exact
    solution V = kp / d (1 - exp(-d t))."""
    import numpy as np

    import mechinfer

    path = tmp_path / "inflow.xml"
    path.write_text(sbml(FAST_INFLOW))
    t = np.array([0.0, 0.05, 1.0, 7.0])
    y = mechinfer.simulate_sbml(path, t, ["V", "T"], backend=backend, rtol=1e-8, atol=1e-10)
    exact = np.stack([2e8 / 30 * (1 - np.exp(-30 * t)), 1e6 * np.exp(-0.01 * t)], 1)
    np.testing.assert_allclose(y, exact, rtol=1e-6, atol=1e-6)


ARCCOT = f"""
<listOfParameters>
  <parameter id="a" constant="false"/><parameter id="b" value="1" constant="false"/>
</listOfParameters>
<listOfRules>
  <assignmentRule variable="a"><math {MATH}><apply><arccot/><apply><minus/>{TIME_CSYMBOL}</apply></apply></math>
  </assignmentRule>
  <rateRule variable="b"><math {MATH}><apply><arccot/><ci>b</ci></apply></math></rateRule>
</listOfRules>"""


def _arccot_expected(t):
    """a = arccot(-t) = atan(1 / -t), pi / 2 at t = 0; b' = arccot(b) = atan(1 / b), b(0) = 1."""
    import numpy as np
    from scipy.integrate import solve_ivp

    with np.errstate(divide="ignore"):
        a = np.where(t == 0, np.pi / 2, -np.arctan(1.0 / t))
    b = solve_ivp(lambda _, y: np.arctan(1.0 / y), (0.0, t[-1]), [1.0], t_eval=t, rtol=1e-12, atol=1e-12).y[0]
    return np.stack([a, b], 1)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_arccot_of_a_negated_zero_is_pi_over_2(tmp_path, backend):
    """arccot(0) = pi / 2 (sympy, libroadrunner). MathML's minus of time is -0.0 at t = 0,
    and sympy's acot turned arccot(-time) into -arccot(time): both gave -pi / 2 there (found
    on an SBML Test Suite case outside the vendored ones, an assignment rule arccot(-time)).
    The rate rule takes arccot's derivative (the solver's Jacobian) where it is smooth.
    The native code's printed form is checked below without compiling a module (numba's
    error model, like numpy's, gives 1 / 0 = inf; float64 numbers here do the same)."""
    import numpy as np

    import mechinfer

    path = tmp_path / "arccot.xml"
    path.write_text(sbml(ARCCOT))
    t = np.array([0.0, 0.5, 1.0, 3.0])
    if backend == "reference":
        y = reference_engine(path, t, ["a", "b"], [])
    else:
        y = mechinfer.simulate_sbml(path, t, ["a", "b"], backend=backend, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, _arccot_expected(t), rtol=1e-7, atol=1e-9)
    x = sympy.Symbol("x")
    a = read_sbml(path).outputs["a"]
    assert not a.could_extract_minus_sign()  # kept as written, not rewritten as -arccot(time)
    assert sympy.diff(type(a)(x), x) == -1 / (1 + x**2)
    from mechinfer.solver.symbolic import _Printer

    native = _Printer().doprint(a.subs(TIME, x))
    with np.errstate(divide="ignore"):
        for value in (-0.0, 0.0, 1.0, -2.0):
            got = eval(native, {"math": math, "x": np.float64(value)})  # arccot(-x)
            assert got == pytest.approx(math.pi / 2 if value == 0 else math.atan(-1 / value)), (native, value)


TINY = f"""
<listOfCompartments><compartment id="C" spatialDimensions="3" size="1" constant="true"/></listOfCompartments>
<listOfSpecies>
  <species id="A" compartment="C" initialAmount="1e-12" {UNITS}/>
  <species id="B" compartment="C" initialAmount="1.5e-12" {UNITS}/>
  <species id="P" compartment="C" initialAmount="1e-13" {UNITS}/>
</listOfSpecies>
<listOfParameters><parameter id="k" value="6.2e12" constant="true"/></listOfParameters>
<listOfReactions><reaction id="R1" reversible="false">
  <listOfReactants><speciesReference species="A" stoichiometry="1" constant="true"/>
    <speciesReference species="B" stoichiometry="1" constant="true"/></listOfReactants>
  <listOfProducts><speciesReference species="P" stoichiometry="1" constant="true"/></listOfProducts>
  <kineticLaw><math {MATH}><apply><times/><ci>C</ci><ci>k</ci><ci>A</ci><ci>B</ci></apply></math></kineticLaw>
</reaction></listOfReactions>"""


def test_simulate_sbml_scales_its_absolute_tolerance_to_tiny_amounts(tmp_path):
    """Amounts of 1e-12 mol (an SBML Test Suite family scales one model down so): solved
    to an absolute 1e-14 they came out 1.6e-4 off relatively, beyond the suite's 1e-4; the
    default absolute tolerance now scales with the smallest nonzero initial value."""
    import numpy as np

    import mechinfer
    from mechinfer.models.sbml_model import SIMULATE_ATOL, scaled_atol

    path = tmp_path / "tiny.xml"
    path.write_text(sbml(TINY))
    t = np.linspace(0.0, 0.5, 11)
    exact = simulate_reference(read_sbml(path), t, ["A", "B", "P"], rtol=1e-12, atol=1e-26)
    y = mechinfer.simulate_sbml(path, t, ["A", "B", "P"])
    np.testing.assert_allclose(y, exact, rtol=1e-7, atol=0)
    assert scaled_atol(np.array([1e-12, 0.0, 1e-13])) == SIMULATE_ATOL * 1e-13
    assert scaled_atol(np.array([0.0, 5.0])) == SIMULATE_ATOL  # values of 1 and above: unscaled


# (parameter, MathML of its initial assignment, IEEE 754 double value): SymPy alone made
# 1/0, log(0), pow(0, -1), cot(0) complex infinity (zoo, TypeError when printed), sqrt(-1),
# ln(-1), arccosh(0.5) imaginary (ValueError: no engine implements ImaginaryUnit), and a
# comparison or max with NaN raised; a division by a parameter of value 0 did the same
IEEE_CONSTANTS = [
    ("inv0", "<apply><divide/><cn>1</cn><cn>0</cn></apply>", math.inf),
    ("neginv0", "<apply><divide/><cn>-1</cn><cn>0</cn></apply>", -math.inf),
    ("zero_by_zero", "<apply><divide/><cn>0</cn><cn>0</cn></apply>", math.nan),
    ("ln0", "<apply><ln/><cn>0</cn></apply>", -math.inf),
    ("log10_0", "<apply><log/><cn>0</cn></apply>", -math.inf),
    ("pow0m1", "<apply><power/><cn>0</cn><cn>-1</cn></apply>", math.inf),
    ("cot0", "<apply><cot/><cn>0</cn></apply>", math.inf),
    ("tan_half_pi", "<apply><tan/><apply><divide/><pi/><cn>2</cn></apply></apply>", math.tan(math.pi / 2)),
    ("sqrt_m1", "<apply><root/><cn>-1</cn></apply>", math.nan),
    ("ln_m1", "<apply><ln/><cn>-1</cn></apply>", math.nan),
    ("acosh_half", "<apply><arccosh/><cn>0.5</cn></apply>", math.nan),
    ("pow_m2_half", "<apply><power/><cn>-2</cn><cn>0.5</cn></apply>", math.nan),
    (
        "nan_lt_1",
        "<piecewise><piece><cn>1</cn><apply><lt/><notanumber/><cn>1</cn></apply></piece>"
        "<otherwise><cn>0</cn></otherwise></piecewise>",
        0.0,
    ),
    ("max_nan_1", "<apply><max/><notanumber/><cn>1</cn></apply>", 1.0),
    ("inv_zero_param", "<apply><divide/><cn>1</cn><ci>zero</ci></apply>", math.inf),
    (
        "nan_param_lt",
        "<piecewise><piece><cn>1</cn><apply><lt/><ci>nan_lt_1_in</ci><cn>1</cn></apply></piece>"
        "<otherwise><cn>0</cn></otherwise></piecewise>",
        0.0,
    ),
]


def test_constant_math_follows_ieee_754(tmp_path):
    """Math on constants evaluates as the float64 arithmetic every engine runs (and the SBML
    Test Suite's results use): x/0 is +-inf, log(0) -inf, sqrt(-1) nan, nan < 1 false."""
    import numpy as np

    import mechinfer

    params = "".join(f'<parameter id="{p}" constant="true"/>' for p, _, _ in IEEE_CONSTANTS)
    params += '<parameter id="zero" value="0" constant="true"/><parameter id="nan_lt_1_in" constant="true"/>'
    assignments = "".join(
        f'<initialAssignment symbol="{p}"><math {MATH}>{m}</math></initialAssignment>' for p, m, _ in IEEE_CONSTANTS
    )
    assignments += f'<initialAssignment symbol="nan_lt_1_in"><math {MATH}><notanumber/></math></initialAssignment>'
    body = f"<listOfParameters>{params}</listOfParameters>"
    body += f"<listOfInitialAssignments>{assignments}</listOfInitialAssignments>"
    path = tmp_path / "ieee.xml"
    path.write_text(sbml(body))
    names = [p for p, _, _ in IEEE_CONSTANTS]
    y = mechinfer.simulate_sbml(path, np.array([0.0, 1.0]), names)
    np.testing.assert_array_equal(y[-1], np.array([v for _, _, v in IEEE_CONSTANTS]))
