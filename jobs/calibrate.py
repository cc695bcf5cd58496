"""Ray job: recalibrate an inference checkpoint's intervals on simulated experiments
(mechinfer.estimate.recalibration); the tables go into calibration.json beside its weights.

    python jobs/calibrate.py --checkpoint runs/pipeline-mmk/train-inference/checkpoint
    python jobs/calibrate.py --checkpoint ecoli --samples 2048    # the shipped E. coli checkpoint

The same as `mechinfer calibrate`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("calibrate"))
