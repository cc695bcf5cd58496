"""The SBML Test Suite's ODE-subset cases through mechinfer (or the test-side reference).

    python bench/sbml_test_suite.py CASES_DIR [--engine mechinfer|reference] [--cases N ...]
        [--level l3v2|l2v4] [--json PATH]

Prints one line per case that does not pass and a summary line
``pass P / refused R / wrong W / error E (of N)``. A case passes when every value satisfies
``|expected - actual| <= absolute + relative * |expected|`` with the case's tolerances;
refused = UnsupportedModelError; wrong = numbers off; error = any other exception.
Engine ``reference`` imports with mechinfer's SBML importer and integrates with scipy
(tests/sbml_reference.py); ``mechinfer`` calls ``mechinfer.simulate_sbml``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sbml_cases import Engine, case_folders, load_case, run_case


def engine_for(name: str) -> Engine:
    if name == "reference":
        from sbml_reference import simulate_reference

        from mechinfer.models.sbml import read_sbml

        return lambda path, t, variables, amounts: simulate_reference(read_sbml(path), t, variables, amounts)
    import mechinfer

    return lambda path, t, variables, amounts: mechinfer.simulate_sbml(path, t, variables, amounts=amounts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases_dir", type=Path, help="folder of case folders NNNNN/")
    parser.add_argument("--engine", choices=["mechinfer", "reference"], default="mechinfer")
    parser.add_argument("--cases", nargs="+", default=[], help="case numbers (default: all)")
    parser.add_argument("--level", choices=["l3v2", "l2v4"], default="l3v2", help="which model file of a case")
    parser.add_argument("--json", type=Path, help="write per-case outcomes here")
    args = parser.parse_args(argv)

    engine = engine_for(args.engine)
    outcomes = []
    start = time.perf_counter()
    for folder in case_folders(args.cases_dir, args.cases):
        if not (folder / f"{folder.name}-sbml-{args.level}.xml").is_file():
            continue
        t0 = time.perf_counter()
        outcome = run_case(load_case(folder, args.level), engine)
        seconds = time.perf_counter() - t0
        outcomes.append((outcome, seconds))
        if outcome.status != "pass":
            print(f"{outcome.case} {outcome.status}: {outcome.detail}", flush=True)
    counts = Counter(o.status for o, _ in outcomes)
    print(
        f"pass {counts['pass']} / refused {counts['refused']} / wrong {counts['wrong']} / "
        f"error {counts['error']} (of {len(outcomes)}) [{args.engine}, {time.perf_counter() - start:.1f} s]"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        records = [
            {"case": o.case, "status": o.status, "detail": o.detail, "seconds": round(s, 3)} for o, s in outcomes
        ]
        summary = dict(counts, total=len(outcomes), engine=args.engine)
        args.json.write_text(json.dumps({"summary": summary, "cases": records}, indent=1) + "\n")
    return 0 if counts["wrong"] == 0 and counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
