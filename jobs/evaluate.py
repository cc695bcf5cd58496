"""Ray job: the paper's Table 1 from baseline results (SPEC 6, stage 6).

    python jobs/evaluate.py --baseline runs/baseline-mmk runs/baseline-ecoli --out results

For a PEtab problem's baseline the report adds the real-data table of SPEC 12 (best
log-likelihood per method by ``problem.log_likelihood``, wall-clock, the reference at the
nominal parameters, the multistart's success rate and expected time to success) and a
figure per condition; the Deep Inference rows need ``--network`` / ``--finetuned``.

The same as `mechinfer evaluate`; `--help` lists every flag with its default.
"""

import sys

from mechinfer.cli import job

if __name__ == "__main__":
    sys.exit(job("evaluate"))
