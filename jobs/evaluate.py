"""Ray job: the paper's Table 1 from baseline results (SPEC 6, stage 6).

    python jobs/evaluate.py --baseline runs/baseline-mmk runs/baseline-ecoli --out results

The same as `mechinfer evaluate`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("evaluate"))
