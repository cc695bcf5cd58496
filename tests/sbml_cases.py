"""SBML Test Suite cases: reading a case folder (settings, expected results) and judging a
simulation of it. Shared by tests/test_sbml.py and bench/sbml_test_suite.py."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechinfer.models.odesystem import UnsupportedModelError

# (model path, times, variables, amounts) -> (len(times), len(variables))
Engine = Callable[[Path, np.ndarray, list[str], list[str]], np.ndarray]


@dataclass(frozen=True)
class Case:
    id: str
    folder: Path
    model: Path  # the Level 3 Version 2 file (or the Level 2 Version 4 one)
    times: np.ndarray
    variables: list[str]
    amounts: list[str]
    absolute: float
    relative: float
    expected: np.ndarray  # (len(times), len(variables))


@dataclass(frozen=True)
class Outcome:
    case: str
    status: str  # pass / refused / wrong / error
    detail: str = ""


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def load_case(folder: Path | str, level: str = "l3v2") -> Case:
    """A case folder's settings, expected results and model (``level`` l3v2 or l2v4)."""
    folder = Path(folder)
    cid = folder.name
    settings: dict[str, str] = {}
    for line in (folder / f"{cid}-settings.txt").read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            settings[key.strip().lower()] = value.strip()
    with open(folder / f"{cid}-results.csv", newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    header = [h.strip() for h in rows[0]]
    data = np.array([[float(x) for x in r] for r in rows[1:]], dtype=float)
    variables = header[1:]
    return Case(
        id=cid,
        folder=folder,
        model=folder / f"{cid}-sbml-{level}.xml",
        times=data[:, 0],
        variables=variables,
        amounts=[v for v in _names(settings.get("amount", "")) if v in variables],
        absolute=float(settings["absolute"]),
        relative=float(settings["relative"]),
        expected=data[:, 1:],
    )


def case_folders(root: Path | str, only: Sequence[str] = ()) -> list[Path]:
    root = Path(root)
    wanted = {f"{int(c):05d}" for c in only}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (not wanted or p.name in wanted))


def judge(case: Case, actual: np.ndarray) -> Outcome:
    actual = np.asarray(actual, dtype=float)
    if actual.shape != case.expected.shape:
        return Outcome(case.id, "wrong", f"shape {actual.shape}, expected {case.expected.shape}")
    expected = case.expected
    bound = case.absolute + case.relative * np.abs(expected)
    with np.errstate(invalid="ignore"):  # inf - inf
        err = np.abs(expected - actual)
    bad = ~(err <= bound)  # NaN fails
    both_nan = np.isnan(expected) & np.isnan(actual)
    both_inf = np.isinf(expected) & (expected == actual)
    bad &= ~(both_nan | both_inf)
    if not bad.any():
        return Outcome(case.id, "pass")
    i, j = np.argwhere(bad)[0]
    return Outcome(
        case.id,
        "wrong",
        f"{int(bad.sum())} values off; first {case.variables[j]} at t={case.times[i]:g}: "
        f"{actual[i, j]!r} vs expected {expected[i, j]!r}",
    )


def run_case(case: Case, engine: Engine) -> Outcome:
    try:
        actual = engine(case.model, case.times, case.variables, case.amounts)
    except UnsupportedModelError as exc:
        return Outcome(case.id, "refused", str(exc))
    except Exception as exc:
        return Outcome(case.id, "error", f"{type(exc).__name__}: {exc}")
    return judge(case, actual)
