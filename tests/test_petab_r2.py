"""R2 of SPEC 4 on a PEtab problem's simulated test set, in units of each sample's true
noise scale (Boehm estimates its noise sd over 10 decades: in units of the reference
sigma every method, the true parameters included, scored ~0)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.data.samples import TEST_SEED, simulate_chunk
from mechinfer.models import likelihood, priors

BOEHM = Path(__file__).parent / "data" / "petab" / "Boehm_JProteomeRes2014" / "Boehm_JProteomeRes2014.yaml"


@pytest.fixture(scope="module")
def boehm():
    m = mechinfer.load_petab(BOEHM).model
    rows = simulate_chunk(m, TEST_SEED, 0, 64)
    rows = {k: v[rows["status"] == 0] for k, v in rows.items()}
    ch = rows["channel"]
    t, c, theta = (torch.as_tensor(rows[k]) for k in ("t", "channel", "theta"))
    with torch.no_grad():
        mu, status = likelihood.predict(m, theta, t, c)
        median = priors.from_z(m.priors, torch.zeros(1, theta.shape[1], dtype=torch.float64)).expand_as(theta)
        mu_median, status_median = likelihood.predict(m, median, t, c)
    assert (status == 0).all() and (status_median == 0).all()
    return {
        "m": m,
        "channel": ch,
        "x": likelihood.to_noise_space(m, rows["value"], ch),
        "clean": likelihood.to_noise_space(m, rows["clean"], ch),
        "sigma": likelihood.noise_scale(m, theta, t, c).numpy(),
        "mu": mu.numpy(),
        "mu_median": mu_median.numpy(),
    }


def test_r2_in_units_of_each_samples_true_noise_scale(boehm):
    m, ch, x, clean, sigma = (boehm[k] for k in ("m", "channel", "x", "clean", "sigma"))
    assert len(x) >= 60 and np.ptp(np.log10(sigma)) > 6  # noise scales over many decades
    truth = likelihood.r2(m, boehm["mu"], ch, x, sigma=sigma, n_boot=200)
    wrong = likelihood.r2(m, boehm["mu_median"], ch, x, sigma=sigma, n_boot=200)
    assert truth.value > 0.99  # 1 - 2e-10 on these 64 samples (the precise ones dominate)
    assert wrong.value < 0.5  # the prior median for every sample: -0.16 (stderr 0.98: few samples weigh most)
    assert likelihood.r2(m, boehm["mu"], ch, clean, sigma=sigma, n_boot=50).value == pytest.approx(1.0, abs=1e-12)
    assert likelihood.r2(m, boehm["mu_median"], ch, clean, sigma=sigma, n_boot=50).value < 0.5
    # in the reference sigma's units both are ~0: the failure this replaces
    assert abs(likelihood.r2(m, boehm["mu"], ch, x, n_boot=50).value) < 0.05


def test_r2_bootstrap_is_exact(boehm):
    """The vectorised bootstrap (per-sample sums, resample counts as weights) gives the
    spread of R2 recomputed on each resample's rows."""
    m, ch, x, sigma, mu = (boehm[k] for k in ("m", "channel", "x", "sigma", "mu_median"))
    got = likelihood.r2(m, mu, ch, x, sigma=sigma, n_boot=20, seed=5)
    draws = np.random.default_rng(5).integers(0, len(x), size=(20, len(x)))  # r2's own draws
    each = [likelihood.r2(m, mu[d], ch[d], x[d], sigma=sigma[d], n_boot=2).value for d in draws]
    assert got.stderr == pytest.approx(np.std(each, ddof=1), rel=1e-8)


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_r2_with_each_channels_sigma_is_the_default(name):
    """Built-in models: sigma = model.sigma[channel] gives today's R2 and stderr."""
    m = mechinfer.get_model(name)
    rows = simulate_chunk(m, TEST_SEED, 0, 48)
    x, ch = rows["value"].copy(), rows["channel"]
    x[:5, -3:] = np.nan  # padded entries carry no weight
    mu = rows["clean"] + 0.3 * np.random.default_rng(0).standard_normal(x.shape) * m.sigma[ch]
    default = likelihood.r2(m, mu, ch, x, n_boot=300)
    given = likelihood.r2(m, mu, ch, x, sigma=m.sigma[ch], n_boot=300)
    assert given.value == pytest.approx(default.value, rel=1e-10, abs=1e-12)
    assert given.stderr == pytest.approx(default.stderr, rel=1e-8)
