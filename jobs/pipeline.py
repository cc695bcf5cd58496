"""Ray job: the whole pipeline for one model in one run directory; a rerun resumes it.

    python jobs/pipeline.py --model mmk --run runs/pipeline-mmk
    python jobs/pipeline.py --model ecoli --run /shared/runs/ecoli --preset paper

The same as `mechinfer pipeline`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("pipeline"))
