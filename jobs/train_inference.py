"""Ray job: train the Deep Set through the proxy, then fine-tune it through the solver (SPEC 6, stage 3).

    python jobs/train_inference.py --model ecoli --data DATASET --proxy PROXY_CKPT --out CHECKPOINT_DIR

The same as `mechinfer train-inference`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("train-inference"))
