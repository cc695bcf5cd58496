"""R2 of SPEC 4 on a PEtab problem's simulated test set, in units of each sample's true
noise scale (Boehm estimates its noise sd over 10 decades: in units of the reference
sigma every method, the true parameters included, scored ~0)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.data.samples import TEST_SEED, simulate_chunk
from mechinfer.evaluate import baseline, report
from mechinfer.learn import losses
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
        "rows": rows,
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


class _Net:
    """A stand-in network: the rows' true z, or the prior median (z = 0) everywhere."""

    def __init__(self, z):
        self.z = torch.as_tensor(z, dtype=torch.float32)

    def __call__(self, t, channel, value):
        return self.z.expand(len(t), -1) if self.z.ndim == 1 else self.z


def test_train_inference_metrics_in_units_of_the_true_noise_scale(boehm):
    m, rows = boehm["m"], boehm["rows"]
    right, wrong = _Net(rows["z"]), _Net(torch.zeros(m.n_parameters))
    assert losses.evaluate(m, right, rows)[1.0].value > 0.99
    assert losses.evaluate(m, wrong, rows)[1.0].value < 0.5
    assert losses.evaluate_observed(m, right, rows)["r2_true"].value > 0.999  # float32 z
    assert losses.evaluate_observed(m, wrong, rows)["r2_true"].value < 0.5
    sigma = losses.true_noise_scale(m, rows)
    assert sigma is not None and np.allclose(sigma, boehm["sigma"])
    assert losses.true_noise_scale(mechinfer.get_model("mmk"), rows) is None


def test_table1_rows_in_units_of_the_true_noise_scale(boehm):
    m, rows = boehm["m"], boehm["rows"]
    t, ch, x, clean = rows["t"], rows["channel"], boehm["x"], boehm["clean"]
    sigma = report.true_noise_scale(m, rows["theta"], t, ch)
    median = np.broadcast_to(m.from_z(np.zeros((1, m.n_parameters))), rows["theta"].shape)
    estimates = {"truth": (rows["theta"], 1.0, None, None), "median": (median, 1.0, None, None)}
    table = {r["method"]: r for r in report._table_rows(m, estimates, {}, t, ch, x, clean, 50, sigma)}
    assert table["truth"]["r2"].value > 0.99 and table["truth"]["r2_true"].value == pytest.approx(1.0)
    assert table["median"]["r2"].value < 0.5 and table["median"]["r2_true"].value < 0.5
    assert report.r2_units(m) == report.R2_UNITS and report.r2_units(mechinfer.get_model("mmk")) != report.R2_UNITS


def _log10_variant(tmp_path: Path) -> Path:
    """Boehm with rSTAT5A_rel on a log10 scale (where the noise space and the model's units differ)."""
    root = tmp_path / BOEHM.parent.name
    shutil.copytree(BOEHM.parent, root)
    table = root / "observables_Boehm_JProteomeRes2014.tsv"
    lines = table.read_text().splitlines()
    log10 = [ln.replace("\tlin\t", "\tlog10\t") if ln.startswith("rSTAT5A_rel\t") else ln for ln in lines]
    table.write_text("\n".join(log10) + "\n")
    return root / BOEHM.name


def test_one_experiment_alone_times_the_estimator_on_values_in_the_models_units(tmp_path):
    """est.estimate takes values in the model's own units; the test rows hold them in the
    noise space (Boehm with rSTAT5A_rel on a log10 scale, where they differ)."""
    m = mechinfer.load_model(_log10_variant(tmp_path))
    assert m.observation is not None and list(m.observation.transformation) == [0, 0, 2]
    rows = simulate_chunk(m, TEST_SEED, 0, 16)  # a log10 value of noise sd 1e5 overflows: flagged
    rows = {k: v[rows["status"] == 0][:2] for k, v in rows.items()}
    seen = []

    class Est:
        def estimate(self, t, channel, value):
            seen.append(value)

    test_rows = {**rows, "value": likelihood.to_noise_space(m, rows["value"], rows["channel"])}  # as _test_rows
    assert not np.allclose(test_rows["value"], rows["value"])
    timed = report.online_seconds(m, Est(), None, test_rows, (1,), 0, 1, 2, optimizers=(), network_starts=False)
    assert len(seen) == 2 and timed[report.SAMPLES_KEY] == 2
    np.testing.assert_allclose(np.concatenate(seen), rows["value"], rtol=1e-12)
    # past its time budget the column stops after the first sample, and says so
    seen.clear()
    timed = report.online_seconds(
        m, Est(), None, test_rows, (1,), 0, 1, 2, optimizers=(), network_starts=False, budget_s=0.0
    )
    assert len(seen) == 1 and timed[report.SAMPLES_KEY] == 1


def test_test_rows_are_in_the_noise_space(tmp_path):
    """The baseline and the report fit and score the test rows in the noise space: the
    SPEC test set of a problem with a log10 observable comes from load_test_set mapped
    (value and clean), once."""
    m = mechinfer.load_model(_log10_variant(tmp_path))
    raw = simulate_chunk(m, TEST_SEED, 0, 8)
    rows, _ = baseline.load_test_set(m, None, 8)
    for key in ("value", "clean"):
        np.testing.assert_array_equal(rows[key], likelihood.to_noise_space(m, raw[key], raw["channel"]))
    on_log = (rows["channel"] == 2) & (rows["status"][:, None] == 0)
    assert on_log.any() and not np.allclose(rows["value"][on_log], raw["value"][on_log])
