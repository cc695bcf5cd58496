"""Ray job: BFGS multi-start baselines and network-started BFGS over the test set (SPEC 6, stage 5).

    python jobs/baseline.py --model ecoli --out runs/baseline-ecoli
    python jobs/baseline.py --model problem.yaml --out runs/baseline-problem [--checkpoint C]

For a PEtab problem (SPEC 12) the same job also fits the problem's own measurements by
BFGS from 64 prior starts (``real_data.parquet``); without ``--checkpoint`` it runs the
prior starts alone (no network rows), and the trust region, which does not apply to such
models, is skipped (the manifest says so).

The same as `mechinfer baseline`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("baseline"))
