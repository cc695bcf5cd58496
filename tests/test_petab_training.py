"""Training stages and the estimator on a PEtab problem's model (issue 25, SPEC 11-12):
values enter the model's noise space once, at the entry points (dataset batches, the
estimator, the frame, served requests); the Laplace approximation and the goodness of fit
take each observation's noise scale (estimated sigma, Laplace noise); and a real
simulate -> train-proxy -> train-inference (through the proxy, then fine-tuned through the
solver) on Boehm gives an estimator that answers Boehm's own measurements."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.estimate import uncertainty
from mechinfer.fit import mle
from mechinfer.learn import checkpoint, losses, networks
from mechinfer.models import likelihood
from mechinfer.serve import handlers

DATA = Path(__file__).parent / "data" / "petab"
BOEHM = DATA / "Boehm_JProteomeRes2014" / "Boehm_JProteomeRes2014.yaml"
LOG_CHANNEL, LAPLACE_CHANNEL = "rSTAT5A_rel", "pSTAT5B_rel"


@pytest.fixture(scope="module")
def boehm():
    return mechinfer.load_petab(BOEHM)


@pytest.fixture(scope="module")
def variant_path(tmp_path_factory) -> Path:
    """Boehm with rSTAT5A_rel observed on a log10 scale and pSTAT5B_rel with Laplace noise."""
    root = tmp_path_factory.mktemp("variant") / "Boehm_JProteomeRes2014"
    shutil.copytree(BOEHM.parent, root)
    path = root / "observables_Boehm_JProteomeRes2014.tsv"
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        if cells[0] == LOG_CHANNEL:
            cells[head.index("observableTransformation")] = "log10"
        if cells[0] == LAPLACE_CHANNEL:
            cells[head.index("noiseDistribution")] = "laplace"
        rows.append("\t".join(cells))
    path.write_text("\n".join([lines[0], *rows]) + "\n")
    return root / BOEHM.name


@pytest.fixture(scope="module")
def variant(variant_path):
    return mechinfer.load_petab(variant_path)


def untrained_estimator(problem, path: Path, tmp_path):
    """An estimator of a freshly initialised Deep Set (what it answers does not matter
    here, only the way values travel)."""
    torch.manual_seed(0)
    m = mechinfer.load_model(str(path))  # with its source, which the checkpoint stores
    offsets = likelihood.to_noise_space(m, problem.measurements["value"].to_numpy(), _channels(problem)).mean()
    net = networks.build(
        networks.default_config(m, "inference", value_offset=[float(offsets)] * 3, value_scale=[10.0] * 3, width=16)
    )
    checkpoint.save(str(tmp_path / "ckpt"), net, model=m, dataset_manifest=None)
    return mechinfer.load_estimator(str(tmp_path / "ckpt"))


def _channels(problem) -> np.ndarray:
    return np.array([problem.model.channels.index(c) for c in problem.measurements["channel"]])


def _real(problem):
    obs = mechinfer.observations_from_frame(problem.measurements, model=problem.model)
    assert obs.ok.all()
    return obs


def test_laplace_at_nominal_is_the_petab_likelihood(boehm):
    """At Boehm's nominal parameters the NLL of the approximation is minus PEtab's
    log-likelihood up to the normal constant, the noise parameters are well determined,
    and an undetermined rate keeps about the prior's unit variance."""
    m = boehm.model
    obs = _real(boehm)
    y = likelihood.to_noise_space(m, obs.value, obs.channel)
    lap = uncertainty.laplace(m, obs.t, obs.channel, y, m.to_z(boehm.nominal[None]))
    n = int(lap.n_observations[0])
    assert n == 48
    assert lap.nll[0] + 0.5 * np.log(2 * np.pi) * n == pytest.approx(-boehm.log_likelihood(), abs=0.01)
    sd = np.sqrt(np.diagonal(lap.cov_z[0]))
    sigma = [m.parameter_names.index(f"sd_{c}") for c in m.channels]
    assert (sd[sigma] < 0.05).all()  # 16 observations each determine a channel's sigma
    assert sd[m.parameter_names.index("k_exp_hetero")] > 0.9  # the data say nothing about it
    assert 0.05 < lap.gof_pvalue[0] < 0.95 and 5 < lap.p_eff[0] < 9
    lower, upper = lap.intervals(m, 0.95)
    assert np.isfinite(lower).all() and np.isfinite(upper).all()
    determined = sd < 0.5  # (an undetermined one's interval is the prior's middle 95%)
    inside = (lower[0] <= boehm.nominal) & (boehm.nominal <= upper[0])
    assert inside[determined].all()


def test_a_rejected_fit_on_a_petab_problem_is_widened_by_its_misfit(boehm):
    """Boehm's measurements shifted by 3 of their noise scales at the nominal parameters
    fail the goodness-of-fit test: the covariance is the inverse of the Fisher
    information (mu's and log sigma's rows together) over s^2 = statistic / dof left,
    plus the prior's I, computed here directly from the observation Jacobians."""
    m = boehm.model
    obs = _real(boehm)
    y = likelihood.to_noise_space(m, obs.value, obs.channel)
    z = m.to_z(boehm.nominal[None])
    t, ch = obs.t, obs.channel
    _, log_sigma, _, _, _ = mle.standardised(m, torch.as_tensor(z), *mle._tensors(t, ch, y), **mle.fit_tolerances(m))
    shifted = y + 3.0 * np.exp(log_sigma.numpy())
    lap = uncertainty.laplace(m, t, ch, shifted, z)
    assert lap.gof_pvalue[0] < 1e-6
    r, jac, L, ok = mle.observation_jacobians(
        m, torch.as_tensor(z), *mle._tensors(t, ch, shifted), **mle.fit_tolerances(m)
    )
    assert ok[0]
    root = torch.cat([jac, L], 1)[0].numpy()
    statistic = float((r[0] ** 2).sum())
    s2 = statistic / (48 - lap.p_eff[0])
    assert 5 < s2 < 15, s2
    expected = np.linalg.inv(root.T @ root / s2 + np.eye(m.n_parameters))
    np.testing.assert_allclose(lap.cov_z[0], expected, rtol=1e-6, atol=1e-9)
    plain = uncertainty.laplace(m, t, ch, y, z)  # the measurements themselves pass: unchanged
    assert plain.gof_pvalue[0] > uncertainty.MISFIT_PVALUE
    unscaled = np.linalg.inv(root.T @ root + np.eye(m.n_parameters))
    assert (np.diag(lap.cov_z[0]) > np.diag(unscaled)).all()


def test_values_enter_the_noise_space_once(variant, variant_path, tmp_path):
    """On a log10 channel and a Laplace one, what the estimator reports for raw values
    equals the approximation at the values mapped once; its NLL is minus PEtab's
    log-likelihood (which keeps the log10 transformation's Jacobian) up to constants."""
    m = variant.model
    est = untrained_estimator(variant, variant_path, tmp_path)
    obs = _real(variant)
    y = likelihood.to_noise_space(m, obs.value, obs.channel)
    assert np.allclose(est.estimate_z(obs.t, obs.channel, obs.value), est.network_z(obs.t, obs.channel, y))
    z = m.to_z(variant.nominal[None])
    lap = uncertainty.laplace(m, obs.t, obs.channel, y, z)
    assert np.isfinite(lap.nll).all() and np.isfinite(lap.cov_z).all() and 0 <= lap.gof_pvalue[0] <= 1
    log_c, lap_c = m.channels.index(LOG_CHANNEL), m.channels.index(LAPLACE_CHANNEL)
    on = lambda c: obs.channel[0] == c
    x = obs.value[0]
    constant = (
        0.5 * np.log(2 * np.pi) * (~on(lap_c)).sum()
        + np.log(2) * on(lap_c).sum()
        + np.log(x[on(log_c)] * np.log(10)).sum()
    )
    assert lap.nll[0] + constant == pytest.approx(-variant.log_likelihood(), abs=0.01)
    res = est.infer(obs.t, obs.channel, obs.value)
    lap_net = uncertainty.laplace(m, obs.t, obs.channel, y, res.z)
    assert res.nll == pytest.approx(lap_net.nll, nan_ok=True)


def test_non_positive_values_on_a_log_channel_are_named(variant, variant_path, tmp_path):
    m = variant.model
    est = untrained_estimator(variant, variant_path, tmp_path)
    obs = _real(variant)
    value = obs.value.copy()
    j = int(np.flatnonzero(obs.channel[0] == m.channels.index(LOG_CHANNEL))[3])
    value[0, j] = -0.5
    with pytest.raises(ValueError, match=f"value -0.5 of channel '{LOG_CHANNEL}' is not positive.*log10 scale"):
        est.infer(obs.t, obs.channel, value)
    frame = variant.measurements.copy()
    frame["experiment"] = np.where(np.arange(len(frame)) < 3, "bad", "good")
    frame.loc[frame.index[(frame["channel"] == LOG_CHANNEL).to_numpy()][0], "experiment"] = "bad"
    frame.loc[(frame["experiment"] == "bad") & (frame["channel"] == LOG_CHANNEL), "value"] = 0.0
    parsed = mechinfer.observations_from_frame(frame, model=m)
    errors = dict(zip(parsed.experiments, parsed.error))
    assert errors["good"] is None
    assert errors["bad"].startswith(f"value 0 at t = 0 h of channel '{LOG_CHANNEL}' is not positive")
    ok = [{"t": 1.0, "channel": LOG_CHANNEL, "value": 20.0}]
    assert handlers.to_arrays(est, ok)[2][0] == 20.0  # the served arrays stay in the model's units
    with pytest.raises(
        handlers.BadRequest, match=r"observations\[0\]\.value 0 of channel 'rSTAT5A_rel' is not positive"
    ):
        handlers.to_arrays(est, [{"t": 1.0, "channel": LOG_CHANNEL, "value": 0.0}])
    served = handlers.infer(est, *handlers.pad([handlers.to_arrays(est, _observations(variant))]))
    assert served["error"] == [None] and np.isfinite(served["nll"]).all()


def _observations(problem) -> list[dict]:
    frame = problem.measurements
    return [
        {"t": float(t), "channel": c, "value": float(v)}
        for t, c, v in zip(frame["t"], frame["channel"], frame["value"])
    ]


def test_batches_and_losses_in_the_noise_space(variant):
    """Dataset rows of the variant: batch_tensors maps value and clean to the noise space;
    the NLL through the proxy and through the model are finite and differentiable."""
    from mechinfer.data.format import to_table
    from mechinfer.data.samples import simulate_chunk

    m = variant.model
    rows = simulate_chunk(m, 0, 0, 24)
    table = to_table(m, rows)
    raw = losses.batch_tensors(table)  # no model: as the dataset holds them
    mapped = losses.batch_tensors(table, m)
    assert len(mapped["z"]) == len(raw["z"]) == (rows["status"] == 0).sum() > 12
    on = mapped["channel"] == m.channels.index(LOG_CHANNEL)
    assert on.any()
    for name in ("value", "clean"):
        assert torch.allclose(mapped[name][on], torch.log10(raw[name][on]), rtol=1e-6)
        assert torch.equal(mapped[name][~on], raw[name][~on])
    torch.manual_seed(0)
    cfg = dict(value_offset=[0.0] * 3, value_scale=[10.0] * 3, width=16, depth=1)
    proxy = networks.build(networks.default_config(m, "proxy", **cfg))
    net = networks.build(networks.default_config(m, "inference", **cfg))
    loss = losses.proxy_loss(m, proxy, mapped)
    loss.backward()
    through_proxy = losses.inference_loss(m, net, mapped, through="proxy", proxy=proxy, min_obs=3)
    through_proxy.backward()
    through_model = losses.inference_loss(m, net, {k: v[:4] for k, v in mapped.items()}, through="model")
    through_model.backward()
    for value in (loss, through_proxy, through_model):
        assert torch.isfinite(value)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# The stages end to end (simulate, train-proxy, train-inference, the estimator on the
# problem's measurements): tests/test_petab_pipeline.py.


def test_tamed_training_nll(variant):
    """The training NLL beyond TAME noise scales: exact within it, continuous with its
    slope at the edge (normal and Laplace channels), and for a prediction 1e30 away (a
    16-decade prior's early estimate) finite with a gradient in log |mu| near TAME^2."""
    m = variant.model
    ch = torch.tensor([[m.channels.index(LAPLACE_CHANNEL), 0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    sigma = torch.full((1, 2), 0.5, dtype=torch.float64)
    value = torch.zeros(1, 2, dtype=torch.float64)
    tame = losses.TAME

    def nll(mu, tamed=True):
        return likelihood.nll_from_mu(m, mu, ch, value, mask, sigma, tame=tame if tamed else None)

    inside = torch.tensor([[3.0, -7.0]], dtype=torch.float64)
    assert float(nll(inside)) == pytest.approx(float(nll(inside, tamed=False)), rel=1e-15)
    for k in range(2):  # each channel at the edge, from both sides: value and slope
        for side in (-1e-7, 1e-7):
            mu = torch.zeros(1, 2, dtype=torch.float64)
            mu[0, k] = tame * 0.5 * (1 + side)
            mu.requires_grad_(True)
            f = nll(mu)
            (g,) = torch.autograd.grad(f.sum(), mu)
            exact = mu.detach().clone().requires_grad_(True)
            (ge,) = torch.autograd.grad(nll(exact, tamed=False).sum(), exact)
            assert float(f) == pytest.approx(float(nll(mu.detach(), tamed=False)), rel=1e-6)
            assert float(g[0, k]) == pytest.approx(float(ge[0, k]), rel=1e-5)
    log_mu = torch.tensor([[math.log(1e30), math.log(1e30)]], dtype=torch.float64, requires_grad=True)
    f = nll(torch.exp(log_mu))
    (g,) = torch.autograd.grad(f.sum(), log_mu)
    assert torch.isfinite(f).all() and float(nll(torch.exp(log_mu.detach()), tamed=False)) > 1e58
    assert float(g[0, 1]) == pytest.approx(tame * tame, rel=1e-6) and float(g[0, 0]) == pytest.approx(tame, rel=1e-6)


def test_a_problems_own_measurements_fit_the_observation_limit(boehm, tmp_path):
    """A served PEtab model takes sets as large as its problem's measurements, whatever
    the configured limit (Schwen's 286 are over the default 256); a built-in model keeps
    the configured limit."""
    assert handlers.observation_limit(boehm.model, 10) == 48
    assert handlers.observation_limit(boehm.model, 256) == 256
    assert handlers.observation_limit(mechinfer.get_model("mmk"), 10) == 10
    obs = _real(boehm)
    rows = zip(obs.t[0], obs.channel[0], obs.value[0])
    given = [{"t": float(t), "channel": boehm.model.channels[c], "value": float(v)} for t, c, v in rows]
    est = untrained_estimator(boehm, BOEHM, tmp_path)
    with pytest.raises(handlers.BadRequest, match="the limit is 10"):
        handlers.to_arrays(est, given, 10)
    t, _, _ = handlers.to_arrays(est, given, handlers.observation_limit(boehm.model, 10))
    assert t.shape == (48,)
