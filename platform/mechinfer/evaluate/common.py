"""What Table 1 (:mod:`.report`) and the calibration report (:mod:`.calibration`) both
use: predictions at estimates, and the observation markers and labels of a
trajectory panel."""

from __future__ import annotations

import numpy as np
import torch

from ..fit import mle
from ..learn import losses
from ..models import likelihood
from ..models.base import Model
from ..solver import SolveStatus


def predict(m: Model, theta: np.ndarray, t, ch) -> np.ndarray:
    """mu (B, N) at the observations; NaN rows where the solve failed. Solved at the
    fits' tolerances (:func:`mechinfer.fit.mle.fit_tolerances`), where the estimates
    were found: at the solver's looser defaults a fit's optimum can fail to integrate
    (a Fujita_SciSignal2010 test sample whose 8-start trust-region fit put a rate on its
    bound: STEP_UNDERFLOW there, and that Table 1 row's R2 NaN)."""
    with torch.no_grad():
        mu, status = likelihood.predict(
            m, torch.as_tensor(theta), torch.as_tensor(t), torch.as_tensor(ch), **mle.fit_tolerances(m)
        )
    mu = mu.numpy()
    mu[status.numpy() != SolveStatus.OK] = np.nan
    return mu


def true_noise_scale(m: Model, theta: np.ndarray, t, ch) -> np.ndarray | None:
    """sigma (B, N) of each test observation at its sample's true theta, the units of R2
    (:func:`mechinfer.models.likelihood.r2`) for a model with an observation model of its
    own, whose noise scale varies with the parameters; None for the other models (each
    channel's fixed sigma)."""
    return losses.true_noise_scale(m, {"theta": theta, "t": t, "channel": ch})


MAX_PANELS = 8  # channels a test-set figure shows (a PEtab problem may have dozens of observable@condition ones)
R2_UNITS = "each test sample's true noise scale"  # a model whose noise scale varies with theta


def r2_units(m: Model) -> str:
    """What R2's residuals are in units of, for the reports' header lines."""
    return "each channel's sigma" if m.observation is None else R2_UNITS


def draw_observations(ax, m: Model, rows: dict, i: int, c: int, n_show: int) -> None:
    """Test sample i's observations of channel c with +- sigma bars, and the grid's labels."""
    sel = (rows["channel"][i] == c) & np.isfinite(rows["value"][i])
    ax.errorbar(
        rows["t"][i][sel],
        rows["value"][i][sel],
        yerr=m.sigma[c],
        fmt="o",
        ms=3,
        color="tab:green",
        label="observations",
    )
    if i == 0:
        ax.set_title(m.channels[c])
    if i == n_show - 1:
        ax.set_xlabel("t (h)")
    if c == 0:
        ax.set_ylabel(f"sample {int(rows['sample_id'][i])}")
