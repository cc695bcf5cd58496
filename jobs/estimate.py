"""Ray job: estimate every experiment of a long table of measurements (SPEC 10).

    python jobs/estimate.py --model ecoli --input examples/ecoli_experiments.csv --output /tmp/ecoli-estimates
    ray job submit --working-dir . -- python jobs/estimate.py --model ecoli --input s3://bucket/obs --output s3://bucket/est

The same as `mechinfer estimate`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("estimate"))
