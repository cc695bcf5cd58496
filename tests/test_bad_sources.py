"""Bad SBML and PEtab sources on the command line (SPEC 11): one line naming the problem,
exit status 2, nothing written (the Python-file cases are in test_model_sources.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mechinfer import cli

PETAB = Path(__file__).parent / "data" / "petab" / "Boehm_JProteomeRes2014"

_SBML = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="bad">
    <listOfCompartments>
      <compartment id="C" size="1" constant="true" spatialDimensions="3"/>
    </listOfCompartments>
    <listOfSpecies>
      <species id="S" compartment="C" initialConcentration="1" hasOnlySubstanceUnits="false"
               boundaryCondition="false" constant="false"/>
    </listOfSpecies>
    <listOfParameters>
      <parameter id="k" value="1" constant="true"/>
      <parameter id="x" value="1" constant="false"/>
    </listOfParameters>
    {extra}
  </model>
</sbml>
"""
_EVENT = """<listOfEvents>
      <event id="kick" useValuesFromTriggerTime="true">
        <trigger initialValue="false" persistent="true">
          <math xmlns="http://www.w3.org/1998/Math/MathML"><apply><gt/><csymbol encoding="text"
            definitionURL="http://www.sbml.org/sbml/symbols/time"> t </csymbol><cn> 1 </cn></apply></math>
        </trigger>
        <listOfEventAssignments>
          <eventAssignment variable="S"><math xmlns="http://www.w3.org/1998/Math/MathML"><cn> 2 </cn></math>
          </eventAssignment>
        </listOfEventAssignments>
      </event>
    </listOfEvents>"""
_ALGEBRAIC = """<listOfRules>
      <algebraicRule><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><minus/><ci> x </ci><ci> k </ci>
      </apply></math></algebraicRule>
    </listOfRules>"""


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


def _sbml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.xml"
    path.write_text(text)
    return path


def _petab(tmp_path: Path) -> Path:
    folder = tmp_path / "problem"
    shutil.copytree(PETAB, folder)
    return folder / "Boehm_JProteomeRes2014.yaml"


def _edit(path: Path, column: str, row_key: tuple[str, str] | None, value) -> None:
    table = pd.read_csv(path, sep="\t", dtype={column: object})
    rows = table.index if row_key is None else table[row_key[0]] == row_key[1]
    table.loc[rows if row_key else 0, column] = value
    table.to_csv(path, sep="\t", index=False)


def _bad_sources(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (source, text the one line must hold)."""
    sources = {
        "malformed XML": (_sbml(tmp_path / "a", "<sbml><model"), "model.xml"),
        "an event": (_sbml(tmp_path / "b", _SBML.format(extra=_EVENT)), "kick"),
        "an algebraic rule": (_sbml(tmp_path / "c", _SBML.format(extra=_ALGEBRAIC)), "lgebraic"),
    }
    missing = _petab(tmp_path / "d")
    (missing.parent / "measurementData_Boehm_JProteomeRes2014.tsv").unlink()
    sources["a missing table"] = (missing, "measurementData_Boehm_JProteomeRes2014.tsv")
    unknown = _petab(tmp_path / "e")
    _edit(unknown.parent / "observables_Boehm_JProteomeRes2014.tsv", "observableFormula", None, "pApB * nonsense")
    sources["an unknown symbol"] = (unknown, "nonsense")
    bounds = _petab(tmp_path / "f")
    _edit(bounds.parent / "parameters_Boehm_JProteomeRes2014.tsv", "upperBound", ("parameterId", "k_phos"), 1e-6)
    sources["a prior with lowerBound >= upperBound"] = (bounds, "k_phos")
    return sources


def test_bad_model_sources_end_with_one_line_and_exit_2(tmp_path, capsys):
    for d in "abc":
        (tmp_path / d).mkdir()
    for what, (source, named) in _bad_sources(tmp_path).items():
        out = tmp_path / f"out-{what.replace(' ', '-')}"
        for argv in (
            ["model", "check", str(source)],
            ["simulate", "--model", str(source), "--n", "4", "--out", str(out)],
        ):
            code, err = _run(argv, capsys)
            assert code == 2, (what, argv, err)
            lines = err.splitlines()
            assert len(lines) == 1 and named in lines[0], (what, err)
            assert not out.exists(), what


@pytest.mark.parametrize("extra", [_EVENT, _ALGEBRAIC])
def test_model_show_names_the_unsupported_element(tmp_path, capsys, extra):
    path = _sbml(tmp_path, _SBML.format(extra=extra))
    code, err = _run(["model", "show", str(path)], capsys)
    assert code == 2
    assert "not supported" in err or "unsupported" in err.lower(), err


def test_stages_refuse_a_petab_problem_whose_noise_reads_states(tmp_path, capsys):
    """The stages train on PEtab problems (SPEC 12), evaluating the noise scale from the
    parameters alone; a noise formula that reads a model state is refused in one line
    before anything is written."""
    problem = tmp_path / "problem"
    shutil.copytree(PETAB, problem)
    table = problem / "observables_Boehm_JProteomeRes2014.tsv"
    obs = pd.read_csv(table, sep="\t")
    obs.loc[0, "noiseFormula"] = "noiseParameter1_pSTAT5A_rel * (1 + pApB)"
    obs.to_csv(table, sep="\t", index=False)
    out = tmp_path / "out"
    code, err = _run(
        ["simulate", "--model", str(problem / "Boehm_JProteomeRes2014.yaml"), "--n", "4", "--out", str(out)], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and "noise formula reads model states" in err, err
    assert not out.exists()
