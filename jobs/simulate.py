"""Ray job: simulate a dataset of a mechanistic model (SPEC 6, stage 1).

    python jobs/simulate.py --model ecoli --n 1000000 --seed 0 --out DIR
    ray job submit --working-dir . -- python jobs/simulate.py --model ecoli --n 1000 --seed 0 --out /shared/ds

Runs on an embedded local Ray unless RAY_ADDRESS (or --address) names a cluster.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from mechinfer import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(list_models())}")
    parser.add_argument("--n", type=int, required=True, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="local directory or pyarrow filesystem URI (s3://...)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="samples per task and per Parquet file")
    parser.add_argument("--num-blocks", type=int, default=None, help="Ray Data blocks (default: one per chunk)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset at --out")
    parser.add_argument("--rtol", type=float, default=None, help="solver relative tolerance")
    parser.add_argument("--max-steps", type=int, default=None, help="solver step limit per sample")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    args = parser.parse_args(argv)

    import ray

    from mechinfer.generate import simulate_dataset

    solver_options = {k: v for k, v in (("rtol", args.rtol), ("max_steps", args.max_steps)) if v is not None}
    try:
        if args.address:
            ray.init(address=args.address)
        summary = simulate_dataset(args.model, args.n, args.seed, args.out, chunk_size=args.chunk_size,
                                   num_blocks=args.num_blocks, overwrite=args.overwrite,
                                   solver_options=solver_options)
    except (ValueError, FileExistsError, ConnectionError) as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    print(json.dumps(summary.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
