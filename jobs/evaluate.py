"""Ray job: the paper's Table 1 for the models of the given baseline results (SPEC 6,
stage 6), as Markdown, CSV and PNG figures.

    python jobs/evaluate.py --baseline runs/baseline-mmk runs/baseline-ecoli --out results

Network rows use the shipped checkpoints unless --network / --finetuned name others
(MODEL=PATH); the fine-tuned one must be the one the baseline started BFGS from.
"""
from __future__ import annotations

import argparse
import shlex
import sys


def _by_model(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} takes MODEL=PATH, got {pair!r}")
        out[name] = path
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", nargs="+", required=True, help="baseline result locations (jobs/baseline.py)")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--network", action="append", default=[], metavar="MODEL=PATH",
                        help="Deep Inference checkpoint trained through the proxy (default: shipped)")
    parser.add_argument("--finetuned", action="append", default=[], metavar="MODEL=PATH",
                        help="checkpoint fine-tuned through the model (default: shipped)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for standard errors")
    args = parser.parse_args(argv)

    from mechinfer.report import evaluate

    try:
        report = evaluate(args.baseline, args.out, networks=_by_model(args.network, "--network"),
                          finetuned=_by_model(args.finetuned, "--finetuned"), n_boot=args.bootstrap,
                          command=shlex.join(["python", "jobs/evaluate.py", *(argv or sys.argv[1:])]))
    except (ValueError, FileExistsError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    with open(f"{args.out}/table1.md") as f:
        print(f.read())
    print(f"report: {args.out}/table1.md ({len(report['files'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
