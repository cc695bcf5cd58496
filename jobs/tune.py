"""Ray job: search the Deep Set settings with Ray Tune and ASHA (SPEC 6, stage 4).

    python jobs/tune.py --model mmk --data DATASET --proxy PROXY_CKPT --out runs/tune-mmk

The same as `mechinfer tune`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("tune"))
