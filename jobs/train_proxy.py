"""Ray job: train the proxy network on a simulated dataset (SPEC 6, stage 2).

    python jobs/train_proxy.py --model ecoli --data DATASET --out CHECKPOINT_DIR [--num-workers 2]

The same as `mechinfer train-proxy`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("train-proxy"))
