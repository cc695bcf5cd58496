"""Intervals and goodness of fit (SPEC 9): the Laplace approximation in z behind
``est.infer``, on cases whose answer is known."""

import numpy as np
import pytest
from scipy import special, stats

import mechinfer
from mechinfer.estimate import uncertainty

THETA = np.array([[2.0, 1.0, 5.0, 0.5]])  # mmk: Vmax, Km, S_0, P_0


def _design(m, n, seed=0):
    t = np.linspace(0.05, m.T, n)[None]
    ch = (np.arange(n) % 2)[None]
    clean = np.take_along_axis(m.simulate(THETA, t[0]), ch[..., None], axis=2)[..., 0]
    noise = np.random.default_rng(seed).standard_normal(clean.shape) * m.sigma[ch]
    return t, ch, clean + noise


def test_intervals_shrink_as_observations_are_added():
    m = mechinfer.get_model("mmk")
    est = mechinfer.load_estimator("mmk")
    widths = []
    for n in (6, 24, 96):
        res = est.infer(*_design(m, n), refine=True)
        assert res.refine_status[0] == "converged"
        assert (res.lower < res.upper).all() and np.isfinite(res.cov_z).all()
        widths.append(m.to_z(res.upper)[0] - m.to_z(res.lower)[0])
        assert ((res.lower <= THETA) & (res.upper >= THETA)).all(), (n, res.lower, res.upper)
    # Vmax, S_0, P_0 (Km hardly matters with S_0 = 5 Km: the enzyme runs saturated)
    widths = np.array(widths)[:, [0, 2, 3]]
    assert (np.diff(widths, axis=0) < 0).all(), widths  # every one, at every step
    assert (widths[-1] < 0.6 * widths[0]).all(), widths


def test_a_parameter_no_observation_informs_gets_the_priors_width():
    """S observed at t = 0 only: S(0) = S_0 depends on nothing else, so Vmax, Km and P_0
    keep the prior's central interval exactly, and S_0's is narrower."""
    m = mechinfer.get_model("mmk")
    est = mechinfer.load_estimator("mmk")
    t, ch, value = np.zeros((1, 5)), np.zeros((1, 5), int), np.full((1, 5), 5.0)
    res = est.infer(t, ch, value, level=0.9)
    q = special.ndtri(0.95)
    prior_low, prior_high = m.from_z(np.full((1, 4), -q))[0], m.from_z(np.full((1, 4), q))[0]
    for i in (0, 1, 3):
        np.testing.assert_allclose([res.lower[0, i], res.upper[0, i]], [prior_low[i], prior_high[i]], rtol=1e-6)
    assert res.upper[0, 2] - res.lower[0, 2] < 0.2 * (prior_high[2] - prior_low[2])
    assert res.lower[0, 2] < 5.0 < res.upper[0, 2]
    np.testing.assert_allclose(res.p_eff, 1.0, atol=0.02)  # one direction determined


def test_gof_pvalue_is_the_chi_square_tail():
    m = mechinfer.get_model("mmk")
    t, ch, value = _design(m, 24)
    lap = uncertainty.laplace(m, t, ch, value, m.to_z(THETA))
    dof = 24 - lap.p_eff[0]
    assert 0 < lap.p_eff[0] < 4
    np.testing.assert_allclose(lap.gof_pvalue[0], stats.chi2.sf(2 * lap.nll[0], dof), rtol=1e-9)
    # a bad fit fails it: the truth's observations shifted by 3 sigma
    shifted = uncertainty.laplace(m, t, ch, value + 1.5, m.to_z(THETA))
    assert shifted.gof_pvalue[0] < 1e-6 < lap.gof_pvalue[0]
    # undefined when less than one degree of freedom is left
    few = uncertainty.laplace(m, t[:, :1], ch[:, :1], value[:, :1], m.to_z(THETA))
    assert np.isnan(few.gof_pvalue[0]) and few.n_observations[0] == 1


def test_refine_auto_and_bad_arguments():
    m = mechinfer.get_model("mmk")
    est = mechinfer.load_estimator("mmk")
    t, ch, value = _design(m, 14)
    bad = value.copy()
    bad[0, 3:6] += 4.0  # three observations 8 sigma off: the network's estimate cannot fit them
    res = est.infer(np.vstack([t, t]), np.vstack([ch, ch]), np.vstack([value, bad]), refine="auto")
    assert list(res.refine_status) == ["skipped", "converged"], res.gof_pvalue
    np.testing.assert_allclose(res.theta[:1], est.estimate(t, ch, value), rtol=1e-6)  # skipped: the network estimate
    assert est.infer(t, ch, value).refine_status[0] == "not_requested"
    with pytest.raises(ValueError, match="level"):
        est.infer(t, ch, value, level=1.0)
    with pytest.raises(ValueError, match="refine"):
        est.infer(t, ch, value, refine="sometimes")


def test_a_case_the_network_cannot_answer_leaves_the_others_alone():
    """Values that overflow the network's input give a non-finite estimate: that row gets
    NaN and, asked to refine, "failed"; the other rows are answered as they are alone."""
    m = mechinfer.get_model("mmk")
    est = mechinfer.load_estimator("mmk")
    t, ch, value = _design(m, 14)
    bad = np.full_like(value, 3e38)
    alone = est.infer(t, ch, value, refine=True)
    both = est.infer(np.vstack([t, t]), np.vstack([ch, ch]), np.vstack([bad, value]), refine=True)
    assert list(both.refine_status) == ["failed", "converged"]
    assert np.isnan(both.theta[0]).all() and np.isnan(both.nll[0])
    np.testing.assert_allclose(both.theta[1], alone.theta[0], rtol=1e-6)
    np.testing.assert_allclose(both.upper[1], alone.upper[0], rtol=1e-6)
