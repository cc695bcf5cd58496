"""Ray job: train the proxy network on a simulated dataset (SPEC 6, stage 2).

    python jobs/train_proxy.py --model ecoli --data DATASET --out CHECKPOINT_DIR [--num-workers 2]
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="dataset written by jobs/simulate.py")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    args = parser.parse_args(argv)

    from mechinfer.train import train

    try:
        summary = train("proxy", args.model, args.data, args.out, num_workers=args.num_workers, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, network={"width": args.width, "depth": args.depth},
                        max_steps_per_epoch=args.max_steps_per_epoch)
    except (ValueError, FloatingPointError) as exc:
        print(f"train_proxy: error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    print(json.dumps(summary.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
