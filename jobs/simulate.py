"""Ray job: simulate a dataset of a mechanistic model (SPEC 6, stage 1).

    python jobs/simulate.py --model ecoli --n 1000000 --seed 0 --out DIR
    ray job submit --working-dir . -- python jobs/simulate.py --model ecoli --n 1000 --out /shared/ds

The same as `mechinfer simulate`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("simulate"))
