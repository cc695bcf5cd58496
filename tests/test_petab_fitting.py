"""Fitting, the baseline's real data and the real-data table on a PEtab problem's model
(SPEC 11, 12; issue 25): the NLL's gradient with estimated noise scales, the trust
region's fallback to BFGS, multistart BFGS on Boehm's measurements, and the report's
real-data rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mechinfer.evaluate import baseline, report
from mechinfer.fit import mle
from mechinfer.models import load_model

DATA = Path(__file__).parent / "data" / "petab"
BOEHM = DATA / "Boehm_JProteomeRes2014" / "Boehm_JProteomeRes2014.yaml"
FUJITA = DATA / "Fujita_SciSignal2010" / "Fujita_SciSignal2010.yaml"
PUBLISHED_BOEHM = -138.22199693517703  # tests/data/petab/README.md
# Of the first 16 prior starts of the real-data stream (seed 0), these end at Boehm's
# published optimum (log-likelihood -138.222); the others in local optima or with a
# parameter pushed to its bound, where z's map flattens the NLL (see the report).
BOEHM_GOOD_STARTS = (6,)


@pytest.fixture(scope="module")
def boehm():
    return load_model(BOEHM)


def test_gradient_with_estimated_noise_scale(boehm):
    """Boehm estimates its noise sd: the objective is sum log sigma + r^2 / 2 (minus the
    PEtab log-likelihood up to its normalisation constant) and its gradient in z matches
    central differences, the sd parameters' components included."""
    m, data = boehm, baseline.real_data(boehm)
    problem = baseline.petab_problem_of(m)
    z = m.to_z(problem.nominal[None])
    tight = {"rtol": 1e-10, "atol": 1e-12}
    fun = mle.objective(m, data["t"], data["channel"], data["value"], **tight)
    f, g = fun(torch.as_tensor(z), torch.arange(1))
    n = data["value"].size
    assert float(f) == pytest.approx(-problem.log_likelihood() - 0.5 * n * np.log(2 * np.pi), abs=1e-6)
    eps = 1e-5
    for j in range(m.n_parameters):
        e = np.zeros_like(z)
        e[0, j] = eps
        up = fun(torch.as_tensor(z + e), torch.arange(1))[0].item()
        down = fun(torch.as_tensor(z - e), torch.arange(1))[0].item()
        assert g[0, j].item() == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-3), m.parameter_names[j]


def test_trust_region_falls_back_to_bfgs(boehm):
    """The trust region minimises |r|^2 / 2, not Boehm's NLL (its sd is estimated): a fit
    asked for it runs BFGS and says so; Fujita's noise is fixed (least squares); the
    built-in models keep the trust region."""
    assert not mle.least_squares(boehm) and mle.method_for(boehm, "trust-region") == "bfgs"
    assert mle.least_squares(load_model(FUJITA))
    assert mle.method_for(load_model("mmk"), "trust-region") == "trust-region"
    data = baseline.real_data(boehm)
    z0 = mle.prior_starts(boehm, [baseline.REAL_DATA_ID], 1, 0)[0]
    fit = mle.fit(boehm, data["t"], data["channel"], data["value"], z0, method="trust-region", max_iter=3)
    assert fit.method == "bfgs" and np.isfinite(fit.nll).all()


def test_fisher_information_adds_the_noise_scales(boehm):
    """J^T J + 2 L^T L: the estimated sd parameters (the last three) get the information
    2 * n_c from their n_c observations (d log sigma / d log sd = 1), times (d log sd / dz)^2."""
    m, data = boehm, baseline.real_data(boehm)
    problem = baseline.petab_problem_of(m)
    z = torch.as_tensor(m.to_z(problem.nominal[None]))
    t, ch, v = mle._tensors(data["t"], data["channel"], data["value"])
    info, ok = mle.fisher_information(m, z, t, ch, v, **mle._fit_options({}, m))
    _, jac, _ = mle.residual_jacobian(m, z, t, ch, v, **mle._fit_options({}, m))
    extra = (info - jac.transpose(1, 2) @ jac)[0].numpy()
    theta, dtheta = (a.numpy()[0] for a in _z_map(m, z))
    for k, name in enumerate(m.parameter_names[-3:]):
        j = m.n_parameters - 3 + k
        n_c = int((data["channel"][0] == k).sum())
        assert extra[j, j] == pytest.approx(2 * n_c * (dtheta[j] / theta[j]) ** 2, rel=1e-6), name
    assert bool(ok[0])


def _z_map(m, z):
    from mechinfer.models import priors

    return (torch.as_tensor(a) for a in priors.from_z_and_derivative(m.priors, z.numpy()))


def test_boehm_multistart_reaches_the_published_optimum(boehm):
    """BFGS from prior starts of the real-data stream on Boehm's measurements: the best
    start's exact PEtab log-likelihood is the published -138.22 (within 0.05), none is
    above it by more than the solver's noise, and every start's row is complete."""
    k = max(BOEHM_GOOD_STARTS) + 1
    table = baseline.fit_real_data(boehm, 0, k, 16, 0, 1024).to_pydict()
    ll = np.array(table["log_likelihood"])
    assert table["start"] == list(range(k)) and set(table["optimizer"]) == {"bfgs"}
    assert np.nanmax(ll) == pytest.approx(PUBLISHED_BOEHM, abs=0.05)
    assert (ll[np.isfinite(ll)] <= PUBLISHED_BOEHM + 0.01).all()
    assert all(s > 0 for s in table["seconds"])


def test_real_data_table(boehm, tmp_path):
    """The report's real-data rows from a baseline's real-data fits: finite, none above
    the best found, best-of-first-k never worse as k grows, the success rate in [0, 1]
    with its expected time, and the reference log-likelihood the problem's nominal."""
    import pyarrow.parquet as pq

    k = 4
    table = baseline.fit_real_data(boehm, 0, k, k, 0, 60)
    pq.write_table(table, tmp_path / baseline.REAL_DATA)
    manifest = {"real_data": {"starts": k, "starts_per_task": k, "solver_tolerances": mle.fit_tolerances(boehm)}}
    rd = report.real_data_results(str(tmp_path), manifest, boehm)
    assert rd is not None
    rows = rd["rows"]
    assert [r["starts"] for r in rows] == [1, 2, 4]
    ll = np.array([r["log_likelihood"] for r in rows])
    assert np.isfinite(ll).all() and (ll <= rd["best_log_likelihood"]).all()
    assert (np.diff(ll) >= 0).all() and (np.diff([r["seconds"] for r in rows]) > 0).all()
    assert 0 < rd["success_rate"] <= 1 and rd["successes"] >= 1
    assert rd["expected_seconds_to_success"] == pytest.approx(rd["seconds_per_start"] / rd["success_rate"])
    assert rd["reference_log_likelihood"] == pytest.approx(PUBLISHED_BOEHM, abs=0.01)
    md = report.real_data_markdown(rd)
    assert "success rate" in md and f"{rd['reference_log_likelihood']:.4f}" in md
    fig = report.plot_real_data(**rd["_plot"])
    assert len(fig.axes) >= 1
