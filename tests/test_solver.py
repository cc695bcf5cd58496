"""The batched solver against tight-tolerance references, its gradients, its order."""

import numpy as np
import pytest
import torch
from reference import mmk_closed_form, radau

import mechinfer
from mechinfer.models import priors
from mechinfer.models.design import draw_experiments
from mechinfer.models.simulate import simulate_observed, simulate_states, states_and_jacobian
from mechinfer.solver import IController, ODETerm, Rodas4, integrate, solve

N_DRAWS = 300


def _native_outputs(name):
    """The model, N_DRAWS experiments drawn from it and the native solver's outputs there:
    what the accuracy and the compiled-steps tests compare against."""
    m = mechinfer.get_model(name)
    d = draw_experiments(m, 2024, np.arange(N_DRAWS))
    return m, d, m.simulate(d["theta"], d["t"], backend="native")


@pytest.mark.parametrize("name", ["mmk", pytest.param("ecoli", marks=pytest.mark.slow)])
def test_accuracy_against_reference(name):
    """Within 1% of the channel's noise sigma at every point, no failed solve: the native
    solver (the CPU default), and the eager torch steps (the GPU path), which run the same
    algorithm and agree with it to round-off (compiled: the next test)."""
    m, d, y = _native_outputs(name)
    np.testing.assert_allclose(m.simulate(d["theta"], d["t"], backend="torch", compile=False), y, rtol=1e-9, atol=1e-9)
    assert not np.isnan(y).any(), "no failed solve"
    worst = 0.0
    for i in range(N_DRAWS):
        if name == "mmk":
            ref = mmk_closed_form(d["theta"][i], d["t"][i])
        else:
            ref = radau(m, d["theta"][i], d["t"][i])
        worst = max(worst, float((np.abs(y[i] - ref) / m.sigma).max()))
    assert worst < 0.01, f"worst error {worst:.2e} sigma"


@pytest.mark.slow  # torch.compile of a model's steps takes 15 s (mmk) to 40 s (E. coli) on 2 CPUs
@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_compiled_steps_agree_with_the_native_solver(name):
    """The torch steps compiled (the GPU path with the default MECHINFER_COMPILE) give the
    native solver's outputs on the same draws as the accuracy test."""
    m, d, y = _native_outputs(name)
    np.testing.assert_allclose(m.simulate(d["theta"], d["t"], backend="torch", compile=True), y, rtol=1e-6, atol=1e-6)


def _stiff_draws(m, n_wanted):
    """E. coli draws that become oxygen-limited (DOT near 0 within the horizon)."""
    d = draw_experiments(m, 0, np.arange(300))
    with torch.no_grad():
        states, _ = simulate_states(m, torch.from_numpy(d["theta"]), torch.linspace(0, m.T, 60).expand(300, -1))
    stiff = np.where(states[..., m.states.index("DOT")].min(dim=1).values.numpy() < 0.1)[0]
    assert len(stiff) >= n_wanted
    return stiff[:n_wanted]


def test_stiff_draws_are_cheap():
    """Oxygen-limited draws cost a few hundred Rosenbrock steps, not millions."""
    m = mechinfer.get_model("ecoli")
    stiff = _stiff_draws(m, 3)
    d = draw_experiments(m, 0, stiff)
    theta = torch.from_numpy(d["theta"])
    steps = []

    class Counting(Rodas4):
        def step(self, term, y, args, h):
            steps.append(y.shape[0])
            return super().step(term, y, args, h)

    with torch.no_grad():
        out, status = integrate(
            ODETerm(m.rhs),
            Counting(),
            IController(),
            m.initial_state(theta),
            theta,
            torch.linspace(0, m.T, 30, dtype=torch.float64).expand(3, -1),
        )
    assert (status == 0).all()
    assert len(steps) < 2000, f"{len(steps)} steps"
    # at the oxygen-limited plateau DOT sits near zero and stays finite
    assert torch.isfinite(out).all() and out[..., 3].min() < 0.1


def _nll_function(m, seed, ids, rtol):
    d = draw_experiments(m, seed, ids)
    t = torch.from_numpy(d["t"])
    ch = torch.from_numpy(d["channel"]).long()
    with torch.no_grad():
        y, _ = simulate_observed(m, torch.from_numpy(d["theta"]), t)
    value = y.gather(2, ch[..., None])[..., 0] + torch.from_numpy(d["noise"])
    sigma = torch.from_numpy(m.sigma)[ch]

    def nll(z):
        """z (..., B, P) -> NLL (..., B); all leading copies solved as one batch."""
        lead = z.shape[:-2]
        flat = z.reshape(-1, z.shape[-1])
        reps = flat.shape[0] // len(ids)
        y, status = simulate_observed(m, priors.from_z(m.priors, flat), t.repeat(reps, 1), rtol=rtol, atol=rtol)
        assert (status == 0).all()
        mu = y.gather(2, ch.repeat(reps, 1)[..., None])[..., 0]
        r = (value.repeat(reps, 1) - mu) / sigma.repeat(reps, 1)
        return 0.5 * (r**2).sum(-1).reshape(*lead, len(ids))

    return nll, torch.from_numpy(d["z"]).double()


@pytest.mark.parametrize("name", ["mmk", pytest.param("ecoli", marks=pytest.mark.slow)])
def test_gradient_matches_finite_differences(name):
    m = mechinfer.get_model(name)
    if name == "ecoli":
        ids = np.concatenate([_stiff_draws(m, 2), [1, 2]])  # two oxygen-limited, two not
        rtol = 1e-8
    else:
        ids, rtol = np.arange(4), 1e-10
    nll, z = _nll_function(m, 0, ids, rtol)
    z = z * 0.9  # off the true parameters, where the gradient is not ~0
    zg = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(nll(zg).sum(), zg)
    eps = 1e-5
    steps = eps * torch.eye(z.shape[1], dtype=z.dtype)[:, None, :]  # (P, 1, P)
    with torch.no_grad():
        values = nll(torch.cat([z + steps, z - steps]))  # (2P, B)
    fd = ((values[: z.shape[1]] - values[z.shape[1] :]) / (2 * eps)).T
    scale = fd.abs().max(dim=1, keepdim=True).values
    rel = ((grad - fd).abs() / (fd.abs() + 1e-3 * scale)).max().item()
    assert rel < 1e-3, f"relative gradient error {rel:.2e}"


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_native_sensitivities_equal_autograd_through_the_torch_steps(name):
    """The native solver's forward sensitivities are the derivatives of the discrete
    method along its steps: the same numbers reverse-mode autograd gives through the
    torch steps (oxygen-limited E. coli draws included), for states and gradients."""
    m = mechinfer.get_model(name)
    ids = np.concatenate([_stiff_draws(m, 2), [1, 2]]) if name == "ecoli" else np.arange(4)
    d = draw_experiments(m, 0, ids)
    t = torch.from_numpy(np.sort(d["t"], axis=1))
    weights = torch.randn(
        len(ids), t.shape[1], len(m.states), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    got = {}
    for backend in ("native", "torch"):
        theta = torch.from_numpy(d["theta"]).clone().requires_grad_()
        states, status = simulate_states(m, theta, t, backend=backend, compile=False)
        assert (status == 0).all()
        (grad,) = torch.autograd.grad((states * weights).sum(), theta)
        got[backend] = (states.detach(), grad)
    torch.testing.assert_close(got["native"][0], got["torch"][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got["native"][1], got["torch"][1], rtol=1e-8, atol=1e-10)
    # the Jacobian the Gauss-Newton start reads off the same sensitivities
    states, jac, status = states_and_jacobian(m, torch.from_numpy(d["theta"]), t)
    row = torch.einsum("bnsp,bns->bp", jac, weights)
    torch.testing.assert_close(row, got["torch"][1], rtol=1e-8, atol=1e-10)


def test_native_backend_refuses_what_it_cannot_run():
    m = mechinfer.get_model("mmk")
    theta = torch.from_numpy(m.sample_prior(2, seed=0))
    with pytest.raises(ValueError, match="unknown solver backend 'fortran'"):
        simulate_states(m, theta, torch.linspace(0, 1, 3), backend="fortran")
    term = ODETerm(m.rhs)  # no native form
    with pytest.raises(ValueError, match="native solver backend needs"):
        solve(term, m.initial_state(theta), theta, torch.linspace(0, 1, 3).expand(2, -1), backend="native")


def test_rodas4_is_fourth_order():
    """Fixed steps on y' = -y^2 + sin-free logistic growth: error falls ~16x per halving."""
    term = ODETerm(lambda y, a: a * y * (1 - y))
    y0 = torch.tensor([[0.1]], dtype=torch.float64)
    a = torch.tensor([[3.0]], dtype=torch.float64)
    exact = 1 / (1 + 9 * np.exp(-3.0))
    errors = []
    for n in (8, 16, 32, 64):
        y, h = y0, torch.full((1,), 1.0 / n, dtype=torch.float64)
        for _ in range(n):
            y, _ = Rodas4().step(term, y, a, h)
        errors.append(abs(y.item() - exact))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert (orders > 3.6).all(), orders


def test_failed_solve_is_reported_not_hidden():
    m = mechinfer.get_model("ecoli")
    theta = torch.from_numpy(m.sample_prior(4, seed=3))
    y, status = simulate_observed(m, theta, torch.linspace(0, m.T, 30, dtype=torch.float64), max_steps=3)
    assert (status != 0).all()
    assert torch.isnan(y).all()


def test_torchdiffeq_backend_for_non_stiff_models():
    """mmk through torchdiffeq (dopri5 in rescaled time), plain and adjoint gradients."""
    m = mechinfer.get_model("mmk")
    d = draw_experiments(m, 9, np.arange(20))
    y = m.simulate(d["theta"], d["t"], solver="dopri5")
    for i in range(20):
        np.testing.assert_allclose(y[i], mmk_closed_form(d["theta"][i], d["t"][i]), atol=1e-3 * m.sigma[0])
    grads = []
    for adjoint in (False, True):
        theta = torch.from_numpy(d["theta"][:3]).clone().requires_grad_()
        out, _ = simulate_observed(
            m, theta, torch.from_numpy(d["t"][:3]), solver="dopri5", adjoint=adjoint, rtol=1e-9, atol=1e-9
        )
        grads.append(torch.autograd.grad(out.sum(), theta)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
