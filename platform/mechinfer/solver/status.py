"""How a solve ended, per sample: stored in every dataset row (SPEC 5, ``status``)."""

from __future__ import annotations

from enum import IntEnum


class SolveStatus(IntEnum):
    OK = 0  # solved; the only rows that are trained on or fitted
    MAX_STEPS = 1  # the step limit ran out before the last observation time
    STEP_UNDERFLOW = 2  # the step size fell below its minimum (or the solution overflowed)
    NONFINITE = 3  # solved, but an observable came out non-finite (or not above 0 on a log scale)
