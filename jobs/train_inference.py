"""Ray job: train the Deep Set inference network (SPEC 6, stage 3): through the frozen
proxy, then fine-tuned through the mechanistic solver; report R^2 on the SPEC test set.

    python jobs/train_inference.py --model ecoli --data DATASET --proxy PROXY_CKPT --out CHECKPOINT_DIR
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="dataset written by jobs/simulate.py")
    parser.add_argument("--proxy", required=True, help="proxy checkpoint written by jobs/train_proxy.py")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5, help="epochs through the proxy")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="epochs through the mechanistic model (0: skip)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--min-obs", type=int, default=3, help="smallest observation subset trained on")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pooling", default="meanmax")
    parser.add_argument("--config", default=None,
                        help="best_config.json from jobs/tune.py: sets width, depth, pooling, encodings, lr, batch size")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--finetune-steps-per-epoch", type=int, default=None)
    args = parser.parse_args(argv)

    from mechinfer.train import train_inference_and_report

    network = {"width": args.width, "depth": args.depth, "pooling": args.pooling}
    if args.config:
        with open(args.config) as f:
            best = json.load(f)
        if best.get("model") != args.model:
            print(f"train_inference: error: {args.config} was tuned for {best.get('model')!r}, not {args.model!r}",
                  file=sys.stderr)
            return 2
        network = {k: best[k] for k in ("width", "depth", "pooling", "time_encoding", "channel_encoding")}
        args.lr, args.batch_size = best["lr"], best["batch_size"]
    try:
        report = train_inference_and_report(
            args.model, args.data, args.proxy, args.out, num_workers=args.num_workers, epochs=args.epochs,
            finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
            finetune_lr=args.finetune_lr, min_obs=args.min_obs,
            network=network,
            max_steps_per_epoch=args.max_steps_per_epoch, finetune_steps_per_epoch=args.finetune_steps_per_epoch)
    except (ValueError, FloatingPointError) as exc:
        print(f"train_inference: error: {exc}", file=sys.stderr)
        return 2
    print(report["text"])
    print(json.dumps({k: v for k, v in report.items() if k != "text"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
