"""The observation model of a PEtab problem's model (mechinfer.models.observation, SPEC 11
and 12): predictions at any (t, channel) equal the problem's exact ones at its design, the
NLL differs from minus the PEtab log-likelihood by a constant only, and simulated rows at
the problem's design are reproducible, with blown-up draws flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mechinfer
from mechinfer.data.samples import simulate_chunk
from mechinfer.models import likelihood
from mechinfer.solver import SolveStatus

DATA = Path(__file__).parent / "data" / "petab"
TIGHT = {"rtol": 1e-8, "atol": 1e-10}


def load(name: str):
    return mechinfer.load_petab(DATA / name / f"{name}.yaml")


@pytest.fixture(scope="module", params=["Boehm_JProteomeRes2014", "Fujita_SciSignal2010"])
def problem(request):
    return load(request.param)


def real_data(problem):
    """The problem's measurements as one observation set: t, channel, value (noise space)."""
    m = problem.model
    channel = torch.as_tensor([m.channels.index(c) for c in problem.measurements["channel"]])[None]
    t = torch.as_tensor(problem.m_time)[None]
    value = likelihood.to_noise_space(m, torch.as_tensor(problem.m_value)[None], channel)
    return t, channel, value


def test_channels_are_the_measured_pairs(problem):
    m = problem.model
    pairs = set(zip(problem.design["condition"], problem.design["observable"]))
    assert len(m.channels) == len(pairs)
    if len(problem.conditions) > 1:
        assert {f"{o}@{c}" for c, o in pairs} == set(m.channels)
    assert set(problem.measurements["channel"]) == set(m.channels)
    assert m.n_obs == len(problem.m_time) and problem.m_time.max() == m.T


def test_predictions_at_the_design_equal_the_problems(problem):
    m = problem.model
    theta = torch.as_tensor(np.stack([problem.nominal, m.sample_prior(1, seed=3)[0]]))
    value, sigma, ok = problem.simulate_measurements(theta)
    t, channel, _ = real_data(problem)
    mu, sd, status = likelihood.predict_with_noise(m, theta, t.expand(2, -1), channel.expand(2, -1), **TIGHT)
    assert ok.all() and (status == SolveStatus.OK).all()
    h = m.observation.from_noise_space(mu, channel.expand(2, -1).numpy())
    np.testing.assert_allclose(h.numpy(), value.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sd.numpy(), sigma.numpy(), rtol=1e-12)
    # the noise alone, without a solve, is the same
    np.testing.assert_allclose(likelihood.noise_scale(m, theta, t.expand(2, -1), channel.expand(2, -1)), sigma)


def test_nll_is_minus_the_log_likelihood_up_to_a_constant(problem):
    m = problem.model
    theta = np.stack([problem.nominal, problem.nominal * 1.2, m.sample_prior(1, seed=5)[0]])
    ll = problem.log_likelihood(theta)
    t, channel, value = real_data(problem)
    nll = likelihood.nll(
        m, torch.as_tensor(theta), t.expand(3, -1), channel.expand(3, -1), value.expand(3, -1), **TIGHT
    )
    total = nll.numpy() + ll
    assert np.isfinite(total).all()
    np.testing.assert_allclose(total[1], total[0], atol=1e-6)
    # a wild prior draw: the two solve different time grids, whose steps differ a little
    np.testing.assert_allclose(total[2], total[0], atol=1e-3)


def test_simulated_rows_at_the_design_are_reproducible_and_flag_failures():
    problem = load("Fujita_SciSignal2010")
    m = problem.model
    # a step budget that some of Fujita's draws exceed (their solves fail: MAX_STEPS)
    rows = simulate_chunk(m, 7, 0, 64, max_steps=100)
    again = simulate_chunk(m, 7, 32, 64, max_steps=100)
    np.testing.assert_array_equal(rows["value"][32:], again["value"])
    order = np.argsort(problem.m_time, kind="stable")
    np.testing.assert_array_equal(rows["t"][0], problem.m_time[order])
    failed = rows["status"] != SolveStatus.OK
    assert failed.any() and not failed.all()
    assert (rows["status"][failed] == SolveStatus.MAX_STEPS).all()
    assert np.isnan(rows["value"][failed]).all() and np.isfinite(rows["value"][~failed]).all()
    # the noise is of the sampled theta's scale: the residuals in the noise space have unit spread
    ok = ~failed
    obs = m.observation
    ch = rows["channel"][ok].astype(np.int64)
    r = obs.to_noise_space(rows["value"][ok], ch) - obs.to_noise_space(rows["clean"][ok], ch)
    sigma = likelihood.noise_scale(
        m, torch.as_tensor(rows["theta"][ok]), torch.as_tensor(rows["t"][ok]), torch.as_tensor(ch)
    )
    scaled = r / sigma.numpy()
    assert 0.9 < scaled.std() < 1.1 and abs(scaled.mean()) < 0.05


def test_simulate_gives_every_channel_in_the_models_units():
    problem = load("Fujita_SciSignal2010")
    m = problem.model
    theta = problem.nominal[None]
    t = np.sort(np.unique(problem.m_time))
    y = m.simulate(theta, t)
    assert y.shape == (1, len(t), len(m.channels))
    for k, name in enumerate(problem.measurements["channel"][:20]):
        col = m.channels.index(name)
        row = np.searchsorted(t, problem.m_time[k])
        value, _, _ = problem.simulate_measurements(torch.as_tensor(theta))
        np.testing.assert_allclose(y[0, row, col], value[0, k].item(), rtol=1e-4)


def test_padding_is_left_out_of_the_status(tmp_path):
    """Padded entries (NaN t, as a subset of a set's observations leaves them) are
    predicted at t = 0 but do not decide a row's status: with pSTAT5A_rel on a log10
    scale (0 at t = 0, no log there) a padded set still solves, with its Jacobian; a real
    observation at t = 0 of that channel is NONFINITE."""
    import shutil

    root = tmp_path / "Boehm_JProteomeRes2014"
    shutil.copytree(DATA / "Boehm_JProteomeRes2014", root)
    table = root / "observables_Boehm_JProteomeRes2014.tsv"
    lines = table.read_text().splitlines()
    column = lines[0].split("\t").index("observableTransformation")
    rows = [line.split("\t") for line in lines[1:]]
    rows[[r[0] for r in rows].index("pSTAT5A_rel")][column] = "log10"
    table.write_text("\n".join([lines[0], *("\t".join(r) for r in rows)]) + "\n")
    p = mechinfer.load_petab(root / "Boehm_JProteomeRes2014.yaml")
    m = p.model
    theta = torch.as_tensor(p.nominal[None])
    c = m.channels.index("pSTAT5A_rel")
    t = torch.tensor([[10.0, 20.0, float("nan")], [0.0, 20.0, 30.0]], dtype=torch.float64)
    ch = torch.full((2, 3), c)
    _, _, status = likelihood.predict_with_noise(m, theta.expand(2, -1), t, ch)
    assert status.tolist() == [SolveStatus.OK, SolveStatus.NONFINITE]
    mu, d_mu, _, _, status = m.observation.predict_jacobian(m, theta.expand(2, -1), t, ch)
    assert status.tolist() == [SolveStatus.OK, SolveStatus.NONFINITE]
    assert torch.isfinite(mu[0, :2]).all() and torch.isfinite(d_mu[0, :2]).all()


def test_times_grouped_by_condition():
    """_by_condition: each observation's time sits at its (row, condition, position), every
    group's times are sorted and padded with their last (0 where a row has none there),
    whatever the order, ties and group sizes."""
    from mechinfer.models.observation import _by_condition

    rng = np.random.default_rng(0)
    t = torch.as_tensor(rng.choice([0.0, 1.0, 2.5, 4.0, 7.0], size=(5, 9)))
    slot = torch.as_tensor(rng.integers(0, 3, size=(5, 9)))
    slot[0] = 1  # a row with every observation under one condition (none under 0 and 2)
    t_cond, position = _by_condition(t, slot, 3)
    assert t_cond.shape == (5, 3, int(max((slot[b] == u).sum() for b in range(5) for u in range(3))))
    np.testing.assert_array_equal(t_cond[torch.arange(5)[:, None], slot, position], t)
    assert (t_cond[:, :, 1:] >= t_cond[:, :, :-1]).all()
    for b in range(5):
        for u in range(3):
            times = sorted(t[b][slot[b] == u].tolist())
            group = t_cond[b, u].tolist()
            assert group[: len(times)] == times
            assert all(x == (times[-1] if times else 0.0) for x in group[len(times) :])


@pytest.mark.parametrize("log10", [False, True])
def test_prediction_jacobians_match_central_differences(problem, log10, tmp_path):
    """predict_jacobian's d mu and d log sigma (forward differentiation of the observable
    and noise formulas on the solver's sensitivities) equal central differences of
    predict in theta, for every parameter: Boehm's sd parameters enter the noise,
    Fujita's observable placeholders name its scaling parameters, and with ``log10`` every
    observable is on a log10 scale (the noise space's slope 1 / (h ln 10)). A tangent
    dropped from the states, the parameters, the placeholders or the slope fails here."""
    if log10:
        import shutil

        root = tmp_path / problem.name
        shutil.copytree(DATA / problem.name, root)
        table = next(root.glob("observables_*.tsv"))
        lines = table.read_text().splitlines()
        column = lines[0].split("\t").index("observableTransformation")
        rows = [line.split("\t") for line in lines[1:]]
        for r in rows:
            r[column] = "log10"
        table.write_text("\n".join([lines[0], *("\t".join(r) for r in rows)]) + "\n")
        # a log needs positive measurements (load_petab refuses others); only the design is used here
        meas_path = next(root.glob("measurementData_*.tsv"))
        meas = pd.read_csv(meas_path, sep="\t")
        meas["measurement"] = meas["measurement"].where(meas["measurement"] > 0, 1.0)
        meas.to_csv(meas_path, sep="\t", index=False)
        problem = mechinfer.load_petab(root / f"{problem.name}.yaml")
    m = problem.model
    t, ch, _ = real_data(problem)
    t = torch.where(t > 0, t, 1.0)  # log10 observables may be 0 at t = 0
    theta = torch.as_tensor(problem.nominal[None]) * 1.1
    tight = {"rtol": 1e-11, "atol": 1e-13}
    _, d_mu, _, d_log_sigma, status = m.observation.predict_jacobian(m, theta, t, ch, **tight)
    assert status.tolist() == [SolveStatus.OK]
    assert d_mu.abs().max() > 0
    # Boehm estimates its noise sd; Fujita's noise is a number in its measurement table
    assert (d_log_sigma.abs().max() > 0) == problem.name.startswith("Boehm")
    for j in range(m.n_parameters):
        eps = 1e-6 * max(abs(float(theta[0, j])), 1e-3)
        e = torch.zeros_like(theta)
        e[0, j] = eps
        up, up_sigma, _ = m.observation.predict(m, theta + e, t, ch, **tight)
        down, down_sigma, _ = m.observation.predict(m, theta - e, t, ch, **tight)
        name = m.parameter_names[j]
        # the solver's sensitivities are not error-controlled: at the earliest times, where
        # a derivative is ~1e-3 of its column's largest, they differ by up to 3e-3 relative
        for exact, fd in (
            (d_mu[0, :, j], (up - down)[0] / (2 * eps)),
            (d_log_sigma[0, :, j], (torch.log(up_sigma) - torch.log(down_sigma))[0] / (2 * eps)),
        ):
            np.testing.assert_allclose(exact, fd, rtol=1e-4, atol=1e-5 * float(fd.abs().max()) + 1e-9, err_msg=name)
