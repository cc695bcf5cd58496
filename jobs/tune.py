"""Ray job: search the Deep Set settings with Ray Tune and ASHA (SPEC 6, stage 4).

    python jobs/tune.py --model mmk --data DATASET --proxy PROXY_CKPT --out runs/tune-mmk

Writes best_config.json (which jobs/train_inference.py reads with --config) and trials.csv.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--steps-per-report", type=int, default=100)
    parser.add_argument("--max-rows", type=int, default=50_000)
    args = parser.parse_args(argv)

    from mechinfer.tuning import tune_inference

    try:
        summary = tune_inference(args.model, args.data, args.proxy, args.out, num_samples=args.num_samples,
                                 max_steps=args.max_steps, steps_per_report=args.steps_per_report,
                                 max_rows=args.max_rows)
    except ValueError as exc:
        print(f"tune: error: {exc}", file=sys.stderr)
        return 2
    print(summary["table"])
    print(f"{summary['trials']} trials in {summary['wall_s']:.0f} s; best: {json.dumps(summary['best'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
