"""Ray job: reproduce the pretrained checkpoint shipped for a model and install it.

    python jobs/pretrain.py --model mmk --n 200000 --work runs/pretrain-mmk

The same as `mechinfer pretrain`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("pretrain"))
