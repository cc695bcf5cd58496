"""Ray job: BFGS multi-start baselines and network-started BFGS over the test set (SPEC 6, stage 5).

    python jobs/baseline.py --model ecoli --out runs/baseline-ecoli

The same as `mechinfer baseline`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("baseline"))
