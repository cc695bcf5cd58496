"""The models and the Python API of SPEC 2, 3 and 8."""

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.models.design import draw_experiments


def test_registry():
    assert mechinfer.list_models() == ["mmk", "ecoli"]
    with pytest.raises(ValueError, match="unknown model 'yeast'"):
        mechinfer.get_model("yeast")


def test_declared_facts():
    mmk = mechinfer.get_model("mmk")
    assert mmk.parameter_names == ("Vmax", "Km", "S_0", "P_0")
    assert mmk.channels == ("S", "P")
    assert mmk.sigma.tolist() == [0.5, 0.5] and mmk.T == 2.0 and mmk.n_obs == 14
    ecoli = mechinfer.get_model("ecoli")
    assert ecoli.parameter_names == (
        "Kap",
        "Ksa",
        "Ko",
        "Ks",
        "Kia",
        "Kis",
        "pAmax",
        "qAmax",
        "qm",
        "qSmax",
        "Yas",
        "Yoa",
        "Yxa",
        "Yem",
        "Yos",
        "Yxsof",
        "X_0",
        "S_0",
        "A_0",
        "DOT_0",
    )
    assert ecoli.channels == ("X", "S", "A", "DOTm")
    assert ecoli.sigma.tolist() == [0.1, 0.2, 0.05, 3.0] and ecoli.T == 6.0 and ecoli.n_obs == 30
    yem = ecoli.quantities[ecoli.parameter_names.index("Yem")].prior
    assert (yem.low, yem.high) == (0.27, 0.75)
    kap = ecoli.quantities[0].prior
    assert (kap.low, kap.high) == pytest.approx((0.5052 / 2, 0.5052 * 2))


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_prior_and_z_map(name):
    m = mechinfer.get_model(name)
    theta = m.sample_prior(20000, seed=1)
    assert theta.shape == (20000, m.n_parameters) and theta.dtype == np.float64
    for i, q in enumerate(m.quantities):
        assert q.prior.low <= theta[:, i].min() and theta[:, i].max() <= q.prior.high
    z = m.to_z(theta)
    # under the prior every component of z is N(0, 1)
    assert np.abs(z.mean(0)).max() < 0.05
    assert np.abs(z.std(0) - 1).max() < 0.05
    assert np.abs(np.mean(np.abs(z) > 1.96, axis=0) - 0.05).max() < 0.01
    np.testing.assert_allclose(m.from_z(z), theta, rtol=1e-10)
    # torch in, torch out, differentiable
    zt = torch.zeros(3, m.n_parameters, dtype=torch.float64, requires_grad=True)
    m.from_z(zt).sum().backward()
    assert torch.isfinite(zt.grad).all()


def test_z_of_median_is_zero():
    m = mechinfer.get_model("mmk")
    # Vmax log-uniform(0.1, 10): median 1; S_0 uniform(1, 10): median 5.5
    z = m.to_z(np.array([[1.0, 1.0, 5.5, 1.0]]))
    np.testing.assert_allclose(z, 0.0, atol=1e-12)


def test_sample_prior_matches_dataset_rows():
    m = mechinfer.get_model("ecoli")
    d = draw_experiments(m, 5, np.arange(10, 20))
    np.testing.assert_array_equal(m.sample_prior(20, seed=5)[10:], d["theta"])
    np.testing.assert_array_equal(m.sample_prior(20, seed=5), m.sample_prior(20, seed=5))
    assert not np.array_equal(m.sample_prior(5, seed=5), m.sample_prior(5, seed=6))


def test_observation_design():
    m = mechinfer.get_model("ecoli")
    d = draw_experiments(m, 0, np.arange(4000))
    assert d["t"].shape == (4000, 30) and (np.diff(d["t"], axis=1) >= 0).all()
    assert d["t"].min() >= 0 and d["t"].max() <= m.T
    counts = np.bincount(d["channel"].ravel(), minlength=4) / d["channel"].size
    np.testing.assert_allclose(counts, 0.25, atol=0.01)
    scaled = d["noise"] / m.sigma[d["channel"]]
    assert abs(scaled.mean()) < 0.01 and abs(scaled.std() - 1) < 0.01


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones((2, 3)), "must have 4 columns"),
        (np.ones(4), "must be 2-D"),
        (np.array([[1.0, 1.0, 5.0, 3.0]]), "P_0 = 3 is outside its prior uniform"),
        (np.array([[20.0, 1.0, 5.0, 1.0]]), "Vmax = 20 is outside its prior log-uniform"),
        (np.array([[np.nan, 1.0, 5.0, 1.0]]), "NaN or infinite"),
    ],
)
def test_simulate_rejects_bad_parameters(bad, message):
    m = mechinfer.get_model("mmk")
    with pytest.raises(ValueError, match=message):
        m.simulate(bad, np.linspace(0, 1, 5))


@pytest.mark.parametrize(
    "t, message",
    [
        (np.array([0.5, 3.0]), r"outside the horizon \[0, 2\]"),
        (np.array([-0.1, 1.0]), "outside the horizon"),
        (np.array([np.nan, 1.0]), "NaN or infinite"),
        (np.ones((3, 4)), r"\(B, N\) with B = 1"),
    ],
)
def test_simulate_rejects_bad_times(t, message):
    m = mechinfer.get_model("mmk")
    with pytest.raises(ValueError, match=message):
        m.simulate(m.sample_prior(1), t)


def test_simulate_shapes_and_order():
    m = mechinfer.get_model("mmk")
    theta = m.sample_prior(3, seed=2)
    t = np.array([1.5, 0.0, 0.7, 0.7, 2.0])  # unsorted, with a repeat, (N,) for all samples
    y = m.simulate(theta, t)
    assert y.shape == (3, 5, 2) and y.dtype == np.float64
    np.testing.assert_allclose(y[:, 1], theta[:, 2:4])  # t = 0 gives the initial state
    np.testing.assert_array_equal(y[:, 2], y[:, 3])
    yb = m.simulate(theta, np.tile(t, (3, 1)))
    np.testing.assert_array_equal(y, yb)
