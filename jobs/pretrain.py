"""Ray job: reproduce the pretrained checkpoint shipped for a model (simulate, train the
proxy, train and fine-tune the inference network, evaluate on the SPEC test set) and
install it under platform/mechinfer/pretrained/<model>/ with its training summary.

    python jobs/pretrain.py --model mmk --n 200000 --work runs/pretrain-mmk
"""
from __future__ import annotations

import argparse
import shlex
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, required=True, help="training samples to simulate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", required=True, help="directory for the dataset, checkpoints and Ray results")
    parser.add_argument("--data", default=None, help="reuse this dataset (same model, n and seed) instead")
    parser.add_argument("--proxy-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--no-install", action="store_true", help="leave the package's checkpoint as it is")
    args = parser.parse_args(argv)

    from mechinfer.pretrain import build_pretrained

    command = "python jobs/pretrain.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        report = build_pretrained(
            args.model, args.work, n=args.n, seed=args.seed, data=args.data, proxy_epochs=args.proxy_epochs,
            epochs=args.epochs, finetune_epochs=args.finetune_epochs, finetune_steps=args.finetune_steps,
            batch_size=args.batch_size, width=args.width, depth=args.depth, num_workers=args.num_workers,
            install=not args.no_install, command=command)
    except (ValueError, FloatingPointError, FileExistsError) as exc:
        print(f"pretrain: error: {exc}", file=sys.stderr)
        return 2
    print(report["text"])
    if "installed" in report:
        print(f"installed into {report['installed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
