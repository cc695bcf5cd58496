"""BFGS fits (SPEC 6.5): the batched optimiser, the exact NLL gradient it uses,
multi-start and the refinement of network estimates."""

import numpy as np
import pytest
import scipy.optimize
import torch

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.fit import bfgs
from mechinfer.fit import mle as fitting
from mechinfer.fit.bfgs import FitStatus
from mechinfer.fit.trust_region import Z_BOX
from mechinfer.models import likelihood as metrics


def _rosenbrock(x, rows):
    x = x.detach().requires_grad_(True)
    f = (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(-1)
    (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def test_batched_bfgs_matches_scipy_on_rosenbrock():
    x0 = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    ours = bfgs.bfgs(_rosenbrock, x0)
    theirs = [
        scipy.optimize.minimize(scipy.optimize.rosen, row, jac=scipy.optimize.rosen_der, method="BFGS")
        for row in x0.numpy()
    ]
    assert (ours.status == FitStatus.CONVERGED).all()
    f_theirs = np.array([r.fun for r in theirs])
    # both end in one of the function's two minima (f = 0 at x = 1, f ~ 3.70 near x1 = -0.78)
    assert np.allclose(np.sort(np.unique(np.round(ours.f.numpy(), 2))), np.sort(np.unique(np.round(f_theirs, 2))))
    assert (ours.f.numpy() < 1e-8).mean() >= 0.75
    # comparable work per problem
    assert ours.evaluations.double().mean() < 1.5 * np.mean([r.nfev for r in theirs])
    # continuous batching (a few problems at a time) gives the same answers
    few = bfgs.bfgs(_rosenbrock, x0, max_batch=5)
    torch.testing.assert_close(few.x, ours.x)
    assert torch.equal(few.iterations, ours.iterations)
    assert few.seconds.sum() > 0 and (few.seconds > 0).all()


def test_bad_start_and_iteration_limit_are_reported():
    def fun(x, rows):  # NaN (say, a failed solve) at the first row's start
        f, g = _rosenbrock(x, rows)
        return torch.where(rows == 0, torch.nan, f), g

    x0 = torch.tensor([[-1.2, 1.0], [-1.2, 1.0], [-1.2, 1.0]], dtype=torch.float64)
    r = bfgs.bfgs(fun, x0, max_iter=3)
    assert r.status.tolist() == [FitStatus.BAD_START, FitStatus.MAX_ITER, FitStatus.MAX_ITER]
    assert torch.isnan(r.f[0]) and torch.equal(r.x[0], x0[0])
    assert r.iterations.tolist() == [0, 3, 3]


def test_deadline_stops_a_problem_at_its_best_point_so_far():
    import time

    def slow(x, rows):  # 20 ms per evaluation
        time.sleep(0.02)
        return _rosenbrock(x, rows)

    x0 = torch.tensor([[-1.2, 1.0]] * 3, dtype=torch.float64)
    f0 = _rosenbrock(x0, None)[0][0]
    now = time.time()
    # one at a time: row 0 runs out of time mid-fit, row 1's deadline has passed before it
    # starts, row 2 has time to converge
    deadline = torch.tensor([now + 0.3, now - 1.0, now + 120.0], dtype=torch.float64)
    r = bfgs.bfgs(slow, x0, deadline=deadline, max_batch=1)
    assert r.status.tolist() == [FitStatus.DEADLINE, FitStatus.DEADLINE, FitStatus.CONVERGED]
    assert r.iterations[0] > 0 and r.f[0] < f0, "the best point found by the deadline"
    assert torch.isnan(r.f[1]) and torch.equal(r.x[1], x0[1]) and r.evaluations[1] == 0
    assert r.f[2] < 1e-8


@pytest.mark.parametrize("name", ["mmk", pytest.param("ecoli", marks=pytest.mark.slow)])
def test_nll_gradient_used_by_bfgs_matches_central_differences(name):
    m = mechinfer.get_model(name)
    rows, _ = baseline.load_test_set(name, None, 4)
    t, ch, x = rows["t"], rows["channel"], rows["value"]
    # a tight tolerance, so that differences measure the gradient, not the solver's error
    fun = fitting.objective(m, t, ch, x, compile=False, rtol=1e-9, atol=1e-9)
    z = torch.as_tensor(fitting.prior_starts(m, range(4), 1, 3)[:, 0]) * 0.5
    idx = torch.arange(4)
    _, grad = fun(z, idx)
    eps, p = 1e-5, m.n_parameters
    steps = eps * torch.eye(p, dtype=z.dtype)[:, None, :]  # (P, 1, P)
    points = torch.cat([z + steps, z - steps]).reshape(-1, p)  # all 2P x 4 shifted points, one solve
    values = fun(points, idx.repeat(2 * p))[0].reshape(2 * p, 4)
    numeric = ((values[:p] - values[p:]) / (2 * eps)).T
    rel = (grad - numeric).norm(dim=1) / numeric.norm(dim=1)
    assert (rel < 1e-4).all(), rel


@pytest.mark.slow
def test_compiled_fit_matches_eager():
    """A fit's NLL, gradient and Gauss-Newton start agree between the native solver (the
    CPU default: forward sensitivities) and the torch steps, eager and compiled (the GPU
    path: autograd through the steps; the suite runs them eager unless a test asks)."""
    m = mechinfer.get_model("mmk")
    rows, _ = baseline.load_test_set("mmk", None, 4)
    t, ch, x = rows["t"], rows["channel"], rows["value"]
    z = torch.as_tensor(fitting.prior_starts(m, range(4), 1, 3)[:, 0]) * 0.5
    idx = torch.arange(4)
    native = fitting.objective(m, t, ch, x, backend="native")(z, idx)
    eager = fitting.objective(m, t, ch, x, backend="torch", compile=False)(z, idx)
    compiled = fitting.objective(m, t, ch, x, backend="torch", compile=True)(z, idx)
    for n, e, c in zip(native, eager, compiled):
        torch.testing.assert_close(e, n, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(c, n, rtol=1e-6, atol=1e-8)
    h_native = fitting.gauss_newton_h0(m, t, ch, x, backend="native")(z, idx)
    h_eager = fitting.gauss_newton_h0(m, t, ch, x, backend="torch", compile=False)(z, idx)
    h_compiled = fitting.gauss_newton_h0(m, t, ch, x, backend="torch", compile=True)(z, idx)
    torch.testing.assert_close(h_eager, h_native, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(h_compiled, h_native, rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def mmk_rows():
    rows, _ = baseline.load_test_set("mmk", None, 24)
    return rows


@pytest.mark.slow
def test_multistart_finds_the_better_optimum_where_one_start_is_stuck(mmk_rows):
    m = mechinfer.get_model("mmk")
    table = baseline.fit_chunk("mmk", mmk_rows, "mmk", 8, 0, 200, ("bfgs",))  # a short budget keeps the test quick
    table = table.sort_by([("sample_id", "ascending"), ("method", "descending"), ("start", "ascending")])
    multi = baseline.multistart_table(table, [1, 8]).to_pydict()
    one = {
        s: f
        for s, f, k, meth in zip(multi["sample_id"], multi["nll"], multi["starts"], multi["method"])
        if meth == "prior" and k == 1
    }
    eight = {
        s: f
        for s, f, k, meth in zip(multi["sample_id"], multi["nll"], multi["starts"], multi["method"])
        if meth == "prior" and k == 8
    }
    truth = metrics.nll(
        m, torch.as_tensor(mmk_rows["theta"]), *(torch.as_tensor(mmk_rows[k]) for k in ("t", "channel", "value"))
    ).numpy()
    assert all(eight[s] <= one[s] + 1e-9 for s in one), "k starts keep the best of the first k"
    stuck = [s for s in one if one[s] > eight[s] + 1.0]
    assert stuck, "some single start ends in a worse local optimum on these samples"
    for s in stuck:
        # the better optimum is a real one: at least as likely as the true parameters
        assert eight[s] <= truth[s] + 1e-3
    # the per-start rows: every sample once per start and once from the network
    ids = np.array(table["sample_id"].to_pylist())
    method = np.array(table["method"].to_pylist())
    assert sorted(ids[method == "prior"].tolist()) == sorted(np.repeat(mmk_rows["sample_id"], 8).tolist())
    assert sorted(ids[method == "network"].tolist()) == sorted(mmk_rows["sample_id"].tolist())


@pytest.mark.parametrize("name", ["mmk", "ecoli"])
def test_refinement_descends_to_a_stationary_point(name):
    """From points that are not optima (the network's estimates, moved), every refinement
    lowers the NLL strictly. BFGS ends where the gradient (nearly) vanishes; the trust
    region (the default), which stops once its model predicts less than NLL_ATOL more
    decrease and keeps inside the z box, ends at the NLL BFGS reaches (within 1e-3) in
    fewer evaluations. A refinement that did nothing, or stopped early, fails these."""
    est = mechinfer.load_estimator(name)
    m = est.model
    rows, _ = baseline.load_test_set(name, None, 8)
    t, ch, x = rows["t"], rows["channel"], rows["value"]
    z0 = est.estimate_z(t, ch, x) + 0.3 * np.random.default_rng(0).standard_normal((8, m.n_parameters))
    fun = fitting.objective(m, t, ch, x, rtol=fitting.FIT_TOL, atol=fitting.FIT_TOL)
    f0, g0 = fun(torch.from_numpy(z0), torch.arange(8))
    assert (g0.abs().amax(1) > 1e-1).all()  # the starts are not stationary
    bfgs = est.refine(t, ch, x, z0, method="bfgs")
    f1, g1 = fun(torch.from_numpy(bfgs.z), torch.arange(8))
    assert (bfgs.status == FitStatus.CONVERGED).all(), bfgs.status
    assert (f1 < f0 - 1e-3).all(), (f0, f1)
    assert (g1.abs().amax(1) < 1e-2).all(), g1.abs().amax(1)  # BFGS's ends are stationary
    tr = est.refine(t, ch, x, z0)  # the default method
    f2, _ = fun(torch.from_numpy(tr.z), torch.arange(8))
    assert (tr.status == FitStatus.CONVERGED).all(), tr.status
    assert (f2 < f0 - 1e-3).all() and (f2 <= f1 + 1e-3).all(), (f0, f1, f2)
    assert (np.abs(tr.z) <= Z_BOX).all()
    assert tr.evaluations.sum() < bfgs.evaluations.sum(), (tr.evaluations, bfgs.evaluations)


@pytest.mark.slow
def test_refine_reaches_the_r2_of_the_true_parameters(mmk_rows):
    est = mechinfer.load_estimator("mmk")
    m = est.model
    t, ch, x = mmk_rows["t"], mmk_rows["channel"], mmk_rows["value"]
    plain = est.estimate(t, ch, x)
    refined = est.estimate(t, ch, x, refine=True)
    args = [torch.as_tensor(a) for a in (t, ch, x)]
    nll_plain = metrics.nll(m, torch.as_tensor(plain), *args).numpy()
    nll_refined = metrics.nll(m, torch.as_tensor(refined), *args).numpy()
    assert (nll_refined <= nll_plain + 1e-3).all(), "refining never makes an estimate worse"
    mu = metrics.predict(m, torch.as_tensor(refined), torch.as_tensor(t), torch.as_tensor(ch))[0].numpy()
    mu_true = metrics.predict(m, torch.as_tensor(mmk_rows["theta"]), torch.as_tensor(t), torch.as_tensor(ch))[0].numpy()
    assert metrics.r2(m, mu, ch, x).value >= metrics.r2(m, mu_true, ch, x).value
    # padded rows (fewer observations) are refined too
    t2, x2 = t.copy(), x.copy()
    t2[0, 5:], x2[0, 5:] = np.nan, np.nan
    one = est.estimate(t2[:1], ch[:1], x2[:1], refine=True)
    assert np.isfinite(one).all() and one.shape == (1, m.n_parameters)
    # with more starts, estimate answers infer's point
    three = est.estimate(t[:4], ch[:4], x[:4], refine=True, starts=3)
    np.testing.assert_allclose(three, est.infer(t[:4], ch[:4], x[:4], refine=True, starts=3).theta, rtol=1e-12)
    assert (metrics.nll(m, torch.as_tensor(three), *(a[:4] for a in args)).numpy() <= nll_refined[:4] + 1e-6).all()
