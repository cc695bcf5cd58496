"""Losses and the training steps of the proxy and the inference network (SPEC 6, 2-3).

Kept free of Ray: the Ray Train loop in :mod:`mechinfer.learn.trainer` calls these on the
batches of their dataset shard, and tests call them directly.

Observed and noise-free values are used in the model's noise space
(:func:`mechinfer.models.likelihood.to_noise_space`): dataset rows enter it in
:func:`batch_tensors`. For the built-in models that space is the values themselves and
the losses are the plain sigma-scaled squares of SPEC 4; for a model with an observation
model of its own (a PEtab problem's) the NLL takes each observation's noise scale at the
estimate (an estimated noise parameter is learned with the others) and its distribution.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ..models import likelihood, priors
from ..models.base import Model
from ..solver import SolveStatus


def batch_tensors(table: pa.Table, model: Model | None = None) -> dict[str, torch.Tensor]:
    """Dataset rows (SPEC 5) as tensors; rows whose solve failed are dropped here.
    ``value`` and ``clean`` come in ``model``'s noise space (the identity for the built-in
    models, and when no model is given); a row whose values have no image there (a
    non-positive value on a log channel) is dropped too."""
    table = solved_rows(table)
    out = {
        "z": list_column(table, "z", np.float32),
        "t": list_column(table, "t", np.float32),
        "channel": list_column(table, "channel", np.int64),
        "value": list_column(table, "value", np.float32),
        "clean": list_column(table, "clean", np.float32),
    }
    if model is not None and model.observation is not None:
        for name in ("value", "clean"):
            out[name] = likelihood.to_noise_space(model, out[name].astype(np.float64), out["channel"]).astype(
                np.float32
            )
        usable = (np.isfinite(out["value"]) == np.isfinite(out["t"])).all(1) & (
            np.isfinite(out["clean"]) == np.isfinite(out["t"])
        ).all(1)
        out = {k: v[usable] for k, v in out.items()}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def solved_rows(table: pa.Table) -> pa.Table:
    """A dataset's rows whose solve succeeded (status 0)."""
    return table.filter(pa.array(np.asarray(table["status"].to_numpy(zero_copy_only=False)) == SolveStatus.OK))


def list_column(table: pa.Table, name: str, dtype) -> np.ndarray:
    """A list column of a dataset's rows (one design: every row's list as long) as (n, N)."""
    flat = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.array(flat, dtype=dtype).reshape(table.num_rows, -1)


def random_subsets(t: torch.Tensor, value: torch.Tensor, min_obs: int, generator: torch.Generator | None = None):
    """Hide a random number of each set's observations (NaN), keeping between ``min_obs``
    and all of them, so the network learns to serve the sizes a lab actually has."""
    n_batch, n_obs = t.shape
    keep_n = torch.randint(min(min_obs, n_obs), n_obs + 1, (n_batch, 1), generator=generator)
    return keep_random(t, value, keep_n, generator)


def keep_random(t: torch.Tensor, value: torch.Tensor, keep_n, generator: torch.Generator | None = None):
    """Keep ``keep_n`` (an int or (B, 1) counts) randomly chosen observations of each set,
    NaN the rest. Random numbers are drawn on the generator's device (the CPU), then
    moved to the data's."""
    rank = torch.rand(t.shape, generator=generator).argsort(dim=1).argsort(dim=1).to(t.device)
    hidden = rank >= torch.as_tensor(keep_n).to(t.device)
    nan = torch.full_like(t, torch.nan)
    return torch.where(hidden, nan, t), torch.where(hidden, nan, value)


def proxy_loss(model: Model, proxy, batch: dict) -> torch.Tensor:
    """Mean squared error of the proxy in units of each channel's noise sigma; for a proxy
    that predicts through asinh (a PEtab problem's model, ``ProxyNet.normalise``), where
    its body predicts: asinh of the values over the channel's scale (its noise at the
    nominal parameters), in the noise space."""
    plain = proxy.module if isinstance(proxy, torch.nn.parallel.DistributedDataParallel) else proxy
    if plain.asinh:
        pred = proxy(batch["z"], batch["t"], batch["channel"], normalised=True)
        return (pred - plain.normalise(batch["clean"], batch["channel"])).square().mean()
    sigma = torch.as_tensor(model.sigma, dtype=torch.float32, device=batch["channel"].device)[batch["channel"]]
    pred = proxy(batch["z"], batch["t"], batch["channel"])
    return ((pred - batch["clean"]) / sigma).square().mean()


def noise_at(model: Model, theta: torch.Tensor, t: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """sigma (B, N) of a model with an observation model of its own at theta (double),
    differentiable in theta, without a solve, on theta's device; the channels' reference
    scales where a noise formula reads the states (the proxy predicts no states)."""
    if model.observation is None or model.observation.noise_reads_states:
        return torch.as_tensor(model.sigma, dtype=theta.dtype, device=theta.device)[channel.long()]
    sigma = likelihood.noise_scale(model, theta.cpu(), t.cpu().to(theta.dtype), channel.cpu())
    return sigma.to(theta.device)


def warmup_loss(net, batch: dict, *, min_obs: int | None = None, generator: torch.Generator | None = None):
    """Mean squared error of the network's z against the simulated draws' z: the start of
    the inference network's training (its ``warmup`` stage, before the NLL through the
    proxy; see :mod:`mechinfer.learn.trainer` for why)."""
    t, value = batch["t"], batch["value"]
    if min_obs is not None:
        t, value = random_subsets(t, value, min_obs, generator)
    return (net(t, batch["channel"], value) - batch["z"]).square().mean()


# Residuals beyond TAME noise scales enter the training NLL of a model with an observation
# model of its own tamed (``likelihood.nll_from_mu``'s ``tame``): 100 sigma is far outside
# anything a fitted estimate leaves, so the NLL of every estimate worth refining is exact.
TAME = 100.0


def inference_loss(
    model: Model,
    net,
    batch: dict,
    *,
    through: str,
    proxy=None,
    min_obs: int | None = None,
    generator: torch.Generator | None = None,
    solver_options: dict | None = None,
) -> torch.Tensor:
    """NLL per observation of the network's estimate, with the model output from the
    frozen proxy (``through="proxy"``) or the mechanistic solver (``through="model"``);
    for a model with an observation model of its own, tamed beyond :data:`TAME`."""
    t, value = batch["t"], batch["value"]
    if min_obs is not None:
        t, value = random_subsets(t, value, min_obs, generator)
    z_hat = net(t, batch["channel"], value)
    mask = likelihood.observed_mask(t, value)
    if through == "proxy":
        mu = proxy(z_hat, torch.nan_to_num(t), batch["channel"])
        if model.observation is not None:  # each observation's noise at the estimate, its distribution
            theta = priors.from_z(model.priors, z_hat.double())
            sigma = noise_at(model, theta, t, batch["channel"])
            per_set = likelihood.nll_from_mu(
                model, mu.double(), batch["channel"], value.double(), mask, sigma, tame=TAME
            )
            return (per_set.sum() / mask.sum()).to(mu.dtype)
        sigma = torch.as_tensor(model.sigma, dtype=mu.dtype, device=mu.device)[batch["channel"]]
        r = torch.where(mask, (value - mu) / sigma, torch.zeros_like(mu))
        return 0.5 * r.square().sum() / mask.sum()
    if through == "model":
        theta = priors.from_z(model.priors, z_hat.double())
        if model.observation is not None:
            mu, sigma, status = likelihood.predict_with_noise(
                model, theta, t.double(), batch["channel"], **(solver_options or {})
            )
            ok = status == SolveStatus.OK
            per_set = likelihood.nll_from_mu(model, mu, batch["channel"], value.double(), mask, sigma, tame=TAME)
            return per_set[ok].sum() / mask[ok].sum()
        mu, status = likelihood.predict(model, theta, t.double(), batch["channel"], **(solver_options or {}))
        ok = status == SolveStatus.OK
        per_set = likelihood.nll_from_mu(model, mu, batch["channel"], value.double(), mask)
        return per_set[ok].sum() / mask[ok].sum()
    raise ValueError(f"through must be 'proxy' or 'model', got {through!r}")


@torch.no_grad()
def evaluate(model: Model, net, data: dict[str, np.ndarray], fractions=(1.0,), seed: int = 0) -> dict:
    """R^2 (SPEC 4) of the network's estimates on a dataset's rows (values in the model's
    own units, as a dataset holds them), with a fraction of each set's observations kept
    (randomly, fixed by seed); for a model with an observation model of its own, in its
    noise space, in units of each row's true noise scale (:func:`true_noise_scale`)."""
    out = {}
    gen = torch.Generator().manual_seed(seed)
    observed = likelihood.to_noise_space(model, np.asarray(data["value"], dtype=np.float64), data["channel"])
    sigma = true_noise_scale(model, data)
    for frac in fractions:
        t, value = keep_random(
            torch.from_numpy(data["t"]).float(),
            torch.from_numpy(observed).float(),
            max(1, round(frac * data["t"].shape[1])),
            gen,
        )
        channel = torch.from_numpy(data["channel"]).long()
        theta = priors.from_z(model.priors, net(t, channel, value).double())
        mu, status = likelihood.predict(model, theta, t.double(), channel)
        x = value.double().numpy()
        if model.observation is not None:  # wide priors: an estimate may not solve; R2 of the others
            ok = (status == SolveStatus.OK).numpy()
            assert sigma is not None
            out[frac] = likelihood.r2(model, mu.numpy()[ok], data["channel"][ok], x[ok], sigma=sigma[ok])
            continue
        out[frac] = likelihood.r2(model, mu.numpy(), data["channel"], x)
    return out


@torch.no_grad()
def true_noise_scale(model: Model, data: dict[str, np.ndarray]) -> np.ndarray | None:
    """sigma (B, N) of each of a dataset's observations at its row's true theta, the units
    of R^2 for a model with an observation model of its own (its noise scale varies with
    the parameters; in units of the reference sigma every estimate, the true parameters'
    included, scores about 0); None for the other models."""
    if model.observation is None:
        return None
    theta = torch.as_tensor(np.asarray(data["theta"], np.float64))
    t = torch.as_tensor(np.asarray(data["t"], np.float64))
    channel = torch.as_tensor(np.asarray(data["channel"], np.int64))
    if model.observation.noise_reads_states:
        return likelihood.predict_with_noise(model, theta, t, channel)[1].numpy()
    return likelihood.noise_scale(model, theta, t, channel).numpy()


@torch.no_grad()
def evaluate_observed(model: Model, net, data: dict[str, np.ndarray]) -> dict:
    """For a model with an observation model of its own, whose noise scale varies with
    the parameters: over a dataset's rows with every observation, R2_true of the network's
    estimates (SPEC 4: the noise-free values in place of the observations, in units of
    each row's true noise scale), and the median over sets of the NLL per observation
    (its log sigma terms included) at the network's estimates and at the true parameters;
    ``failed``: estimates the solver could not simulate (left out of both)."""
    channel = torch.from_numpy(data["channel"]).long()
    t = torch.from_numpy(data["t"]).double()
    value = torch.from_numpy(likelihood.to_noise_space(model, np.asarray(data["value"], np.float64), data["channel"]))
    clean = likelihood.to_noise_space(model, np.asarray(data["clean"], np.float64), data["channel"])
    theta = priors.from_z(model.priors, net(t.float(), channel, value.float()).double())
    mu, sigma, status = likelihood.predict_with_noise(model, theta, t, channel)
    ok = (status == SolveStatus.OK).numpy()
    true_sigma = true_noise_scale(model, data)
    assert true_sigma is not None
    mask = likelihood.observed_mask(t, value)
    n = mask.sum(-1).double()
    nll_net = (likelihood.nll_from_mu(model, mu, channel, value, mask, sigma) / n).numpy()
    nll_true = likelihood.nll(model, torch.from_numpy(np.asarray(data["theta"], np.float64)), t, channel, value) / n
    return {
        "r2_true": likelihood.r2(model, mu.numpy()[ok], data["channel"][ok], clean[ok], sigma=true_sigma[ok]),
        "nll_network": float(np.median(nll_net[ok])),
        "nll_true_parameters": float(np.nanmedian(nll_true.numpy()[ok])),
        "failed": int((~ok).sum()),
    }
