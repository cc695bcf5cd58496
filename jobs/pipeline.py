"""Ray job: the whole pipeline for one model (simulate -> train proxy (-> tune) -> train
inference -> baseline -> evaluate -> serve) in one run directory; a rerun skips the
finished stages and resumes the first unfinished one.

    python jobs/pipeline.py --model mmk --run runs/pipeline-mmk              # small preset, minutes
    python jobs/pipeline.py --model ecoli --run /shared/runs/ecoli --preset paper   # on a cluster (shared disk)
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys


def main(argv=None) -> int:
    from mechinfer import pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", required=True, help="run directory (created; a rerun resumes it)")
    parser.add_argument("--preset", default="small", help=f"one of {', '.join(pipeline.PRESETS)} (default small)")
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated subset of {','.join(pipeline.STAGES)} (default: all; tune "
                             "only where the preset turns it on)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else an "
                                                        "embedded Ray)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port of the served endpoint (127.0.0.1)")
    parser.add_argument("--n", type=int, default=None, help="override the preset's number of samples")
    parser.add_argument("--baseline-limit", type=int, default=None, help="override: test samples to fit")
    args = parser.parse_args(argv)

    try:
        stages = None if args.stages is None else [s.strip() for s in args.stages.split(",") if s.strip()]
        overrides = {"n": args.n, "baseline_limit": args.baseline_limit}
        address = args.address or os.environ.get("RAY_ADDRESS")
        pipeline.check_address(address)
        planned = pipeline.plan(args.model, args.run, preset=args.preset, stages=stages, overrides=overrides)
        import ray

        ray.init(address=address, log_to_driver=False, include_dashboard=None if address else False)
        command = "python jobs/pipeline.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        records = pipeline.execute(planned, port=args.port, command=command)
    except (ValueError, ConnectionError, FileExistsError, FloatingPointError) as exc:
        print(f"pipeline: error: {exc}", file=sys.stderr)
        return 2
    if "evaluate" in records:
        print(f"Table 1 report: {records['evaluate']['outputs']['report']}")
    if "serve" in records and "answer" in records["serve"]["outputs"]:
        answer = records["serve"]["outputs"]["answer"]
        print(f"served answer ({records['serve']['outputs']['endpoint']}): parameters {answer['parameters']}, "
              f"NLL {answer['nll']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
