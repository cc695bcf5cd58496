"""``load_estimator`` and the estimator it returns (SPEC 8)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from ..fit import mle
from ..learn import checkpoint
from ..models import get_model, list_models, priors


class Estimator:
    """Maps observation sets to parameter estimates with a trained Deep Set network."""

    def __init__(self, net: torch.nn.Module, meta: dict):
        self.net = net
        self.meta = meta
        self.model = get_model(meta["model"])
        self.checkpoint_id = meta["checkpoint_id"]

    @torch.no_grad()
    def estimate_z(self, t, channel, value) -> np.ndarray:
        t, channel, value = self._check(t, channel, value)
        return (
            self.net(
                torch.tensor(t, dtype=torch.float32), torch.tensor(channel), torch.tensor(value, dtype=torch.float32)
            )
            .double()
            .numpy()
        )

    def estimate(self, t, channel, value, refine: bool = False) -> np.ndarray:
        """t, value (B, N) float; channel (B, N) int index into model.channels; rows with
        fewer observations padded with NaN values -> theta (B, P), physical units.

        ``refine=True`` polishes each estimate by one BFGS start from it (the paper's
        Deep Inference + BFGS): the maximum-likelihood fit near the network's answer."""
        z = self.estimate_z(t, channel, value)
        if refine:
            z = self.refine(t, channel, value, z).z
        return priors.from_z(self.model.priors, torch.from_numpy(z)).numpy()

    def refine(self, t, channel, value, z, **fit_options) -> mle.Fit:
        """One BFGS start per observation set from z (B, P), the network's estimate. A row
        whose start cannot be simulated keeps z (status FitStatus.BAD_START). ``fit_options`` go to
        :func:`mechinfer.fit.mle.fit` (e.g. ``compile``)."""
        t, channel, value = self._check(t, channel, value)
        return mle.fit(self.model, t, channel, value, z, **fit_options)

    def _check(self, t, channel, value):
        m = self.model
        t = np.asarray(t, dtype=np.float64)
        value = np.asarray(value, dtype=np.float64)
        if t.ndim == 1:
            t, value, channel = t[None], value[None], np.asarray(channel)[None]
        channel = np.asarray(channel)
        if not (t.shape == value.shape == channel.shape) or t.ndim != 2:
            raise ValueError(
                f"t, channel and value must have the same (B, N) shape, got {t.shape}, {channel.shape}, {value.shape}"
            )
        present = np.isfinite(value)
        if (np.isfinite(t) != present).any():
            raise ValueError("an observation has a time but no finite value, or a value but no finite time")
        if not present.any(axis=1).all():
            raise ValueError(f"row {int(np.where(~present.any(axis=1))[0][0])} has no observations")
        if ((t < 0) | (t > m.T))[present].any():
            raise ValueError(f"observation times must lie in [0, {m.T:g}] h for {m.name}")
        ch = np.where(present, channel, 0)
        if not np.issubdtype(ch.dtype, np.integer) or ((ch < 0) | (ch >= len(m.channels))).any():
            raise ValueError(f"channel must be integer indices into {list(m.channels)}")
        return t, ch.astype(np.int64), value


def shipped_checkpoint(model: str) -> str:
    return str(resources.files("mechinfer") / "pretrained" / model)


def load_estimator(source: str) -> Estimator:
    """A checkpoint directory or URI, or a model name for the pretrained checkpoint
    shipped with the package."""
    if source in list_models():
        path = shipped_checkpoint(source)
        if not (resources.files("mechinfer") / "pretrained" / source / checkpoint.META).is_file():
            raise ValueError(f"no pretrained checkpoint for {source!r} is shipped with this build")
        source = path
    net, meta = checkpoint.load(source, kind="inference")
    return Estimator(net, meta)
