"""Ray job: BFGS multi-start baselines and network-initialised BFGS over the test set
(SPEC 6, stage 5).

    python jobs/baseline.py --model ecoli --out runs/baseline-ecoli
    ray job submit --working-dir . -- python jobs/baseline.py --model mmk --out /shared/baseline-mmk

Runs on an embedded local Ray unless RAY_ADDRESS (or --address) names a cluster.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict


def main(argv=None) -> int:
    from mechinfer import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(list_models())}")
    parser.add_argument("--out", required=True, help="output directory or pyarrow filesystem URI")
    parser.add_argument("--checkpoint", default=None,
                        help="inference checkpoint for the network start (default: the shipped one)")
    parser.add_argument("--test-set", default=None, help="dataset location to fit (default: the SPEC test set)")
    parser.add_argument("--limit", type=int, default=None, help="fit only the first LIMIT test samples")
    parser.add_argument("--starts", default="1,2,4,8", help="numbers of prior starts to report, comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior starts")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="test samples per Ray task (each fits all their starts as one batch)")
    parser.add_argument("--max-iter", type=int, default=1024, help="BFGS iterations per start, at most")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete result at --out")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    args = parser.parse_args(argv)

    import ray

    from mechinfer.baseline import run_baseline

    try:
        starts = [int(s) for s in args.starts.split(",") if s.strip()]
    except ValueError:
        print(f"baseline: error: --starts must be comma-separated integers, got {args.starts!r}", file=sys.stderr)
        return 2
    try:
        if args.address:
            ray.init(address=args.address)
        summary = run_baseline(args.model, args.out, checkpoint=args.checkpoint, test_set=args.test_set,
                               limit=args.limit, starts=starts, seed=args.seed, chunk_size=args.chunk_size,
                               max_iter=args.max_iter, overwrite=args.overwrite,
                               command=shlex.join(["python", "jobs/baseline.py", *(argv or sys.argv[1:])]))
    except (ValueError, FileExistsError, ConnectionError) as exc:
        print(f"baseline: error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
