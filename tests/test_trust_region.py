"""Trust-region Gauss-Newton (issue 24): the batched optimiser on small least-squares
problems whose answers are known, and on the models' refinements against BFGS."""

import time

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.evaluate import baseline
from mechinfer.fit import mle
from mechinfer.fit.schedule import FitStatus
from mechinfer.fit.trust_region import Z_BOX, trust_region


def _rosenbrock(x, rows):
    """Rosenbrock's function as least squares: r = (10 (x2 - x1^2), 1 - x1)."""
    r = torch.stack([10 * (x[:, 1] - x[:, 0] ** 2), 1 - x[:, 0]], dim=1)
    J = torch.zeros(len(x), 2, 2, dtype=x.dtype)
    J[:, 0, 0], J[:, 0, 1], J[:, 1, 0] = -20 * x[:, 0], 10.0, -1.0
    return r, J


START = torch.tensor([[-1.2, 1.0]], dtype=torch.float64)


def test_rosenbrock_converges_from_the_classic_start():
    """The full Gauss-Newton step from (-1.2, 1) raises f a hundredfold; the trust region
    must cut it, and Gauss-Newton (with curvature) then reaches the minimum in a few
    dozen evaluations, where steepest descent inside the region needs thousands."""
    r = trust_region(_rosenbrock, START, box=10.0, max_iter=200)
    assert r.status.tolist() == [FitStatus.CONVERGED]
    torch.testing.assert_close(r.x, torch.ones(1, 2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert r.f[0] < 1e-10 and r.evaluations[0] <= 40, (r.f, r.evaluations)


def test_a_rejected_step_shrinks_the_radius():
    """A first radius so large that the first step is the full Gauss-Newton step, which
    is rejected: only a radius that shrinks after it lets the fit go on."""
    r = trust_region(_rosenbrock, START, box=10.0, radius0=100.0, max_iter=200)
    assert r.status.tolist() == [FitStatus.CONVERGED]
    assert r.f[0] < 1e-10


def test_linear_least_squares_take_one_step():
    """For linear residuals the Gauss-Newton model is exact: one step to the minimum."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 6, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    fun = lambda x, rows: ((A[rows] @ x[..., None])[..., 0] - b[rows], A[rows])
    r = trust_region(fun, torch.zeros(4, 3, dtype=torch.float64), radius0=100.0)
    best = torch.linalg.lstsq(A, b[..., None]).solution[..., 0]
    torch.testing.assert_close(r.x, best, atol=1e-9, rtol=0)
    assert (r.status == FitStatus.CONVERGED).all() and (r.iterations == 1).all(), r.iterations


def test_the_hard_case_steps_along_the_negative_curvature():
    """The subproblem's hard case (Nocedal & Wright 4.3): H = J^T J rounds to an
    indefinite matrix on a plateau, and g has no component along its most negative
    curvature, so |p(lam)| stays below the radius as lam falls to -w_0, where w_0 + lam
    is 0 to rounding. The step goes along that direction to the radius; it used to stop
    with a ZeroDivisionError (compiled) or NaN (Python), which ended every fit of a
    Fujita_SciSignal2010 baseline chunk."""
    from mechinfer.fit.trust_region import _subproblem_eig

    w, a = np.array([-1e-3, 1.0, 2.0]), np.array([0.0, 1e-3, 1e-3])
    for run in (_subproblem_eig, _subproblem_eig.py_func):
        p, limited, lam = run(w, np.eye(3), a, 1.0)
        assert np.isfinite(p).all() and limited and lam == pytest.approx(1e-3)
        assert np.linalg.norm(p) == pytest.approx(1.0) and abs(p[0]) > 0.999
        assert -(a @ p + 0.5 * p @ (w * p)) > 0  # the model's decrease: -(g.p + p.H p / 2)


def test_steep_residuals_limited_by_the_radius():
    """Residuals of scale 1e55 (a parameter near a prior bound makes such Jacobians):
    H's eigenvalues and the Levenberg parameter reach 1e110, whose cube overflows. The
    subproblem's Newton iteration must still find the step at the radius (it divided by
    a sum of a^2 / d^3 that had underflowed to zero: ZeroDivisionError)."""
    J = torch.diag(torch.tensor([1e55, 2e55], dtype=torch.float64))
    best = torch.tensor([2.0, -3.0], dtype=torch.float64)
    fun = lambda x, rows: ((x - best) @ J.T, J.expand(len(x), 2, 2))
    r = trust_region(fun, torch.zeros(1, 2, dtype=torch.float64), radius0=0.5)
    assert r.status.tolist() == [FitStatus.CONVERGED]
    torch.testing.assert_close(r.x[0], best, atol=1e-9, rtol=0)
    assert r.evaluations[0] >= 3  # the radius (0.5, doubling) limited the first steps


def test_iterates_stay_in_the_box():
    """An optimum outside the box: the fit ends on its face, converged (the projected
    gradient vanishes), and never evaluates a point outside it."""
    seen = []

    def fun(x, rows):
        seen.append(x.clone())
        return x - torch.tensor([20.0, -30.0, 0.5], dtype=x.dtype), torch.eye(3, dtype=x.dtype).expand(len(x), 3, 3)

    r = trust_region(fun, torch.tensor([[0.0, 0.0, 0.0], [9.0, -9.0, 9.0]], dtype=torch.float64))
    assert (r.status == FitStatus.CONVERGED).all()
    torch.testing.assert_close(r.x, torch.tensor([[Z_BOX, -Z_BOX, 0.5]] * 2, dtype=torch.float64))
    assert torch.cat(seen).abs().max() <= Z_BOX


def test_acceleration_probes_with_residuals_only():
    """Geodesic acceleration along Rosenbrock's curved valley: each step the radius limits
    is first probed with the residuals alone (``residuals_only``, never counted as an
    evaluation), and the accelerated steps reach the minimum in fewer residual and
    Jacobian evaluations than plain Gauss-Newton."""
    calls = {"full": 0, "probe": 0}

    def full(x, rows):
        calls["full"] += 1
        return _rosenbrock(x, rows)

    def probe(x, rows):
        calls["probe"] += 1
        return _rosenbrock(x, rows)[0]

    r = trust_region(full, START, residuals_only=probe, box=10.0, max_iter=200)
    assert r.status.tolist() == [FitStatus.CONVERGED] and r.f[0] < 1e-10
    assert r.evaluations[0] == calls["full"] and calls["probe"] > 0, calls
    plain = trust_region(_rosenbrock, START, box=10.0, max_iter=200, accelerate=False)
    assert plain.f[0] < 1e-10 and r.evaluations[0] < plain.evaluations[0], (r.evaluations, plain.evaluations)


def test_bad_start_deadline_and_batching():
    def fun(x, rows):  # NaN (a failed solve, say) at the first row
        res, jac = _rosenbrock(x, rows)
        return torch.where((rows == 0)[:, None], torch.nan, res), jac

    x0 = START.repeat(4, 1)
    now = time.time()
    deadline = torch.tensor([now + 60, now - 1.0, now + 60, now + 60], dtype=torch.float64)
    r = trust_region(fun, x0, box=10.0, max_batch=1, deadline=deadline)
    assert r.status.tolist() == [FitStatus.BAD_START, FitStatus.DEADLINE, FitStatus.CONVERGED, FitStatus.CONVERGED]
    assert torch.isnan(r.f[0]) and torch.isnan(r.f[1]) and r.evaluations[1] == 0
    together = trust_region(fun, x0, box=10.0)
    torch.testing.assert_close(together.x[2:], r.x[2:])
    assert torch.equal(together.iterations[2:], r.iterations[2:])
    assert r.seconds.sum() > 0


@pytest.fixture(scope="module", params=["mmk", "ecoli"])
def refinement(request):
    """Network starts on 6 SPEC test cases, refined by BFGS and by the trust region as
    ``mle.fit`` runs it (whose every evaluated point, probes included, is recorded)."""
    name = request.param
    est = mechinfer.load_estimator(name)
    m = est.model
    rows, _ = baseline.load_test_set(name, None, 6)
    t, ch, x = rows["t"], rows["channel"], rows["value"]
    z0 = est.estimate_z(t, ch, x)
    bfgs_fit = mle.fit(m, t, ch, x, z0)
    res, plain = mle.residual_functions(m, t, ch, x, **mle._fit_options({}))
    seen = []

    def recorded(z, idx):
        seen.append(z.clone())
        return res(z, idx)

    def probed(z, idx):
        seen.append(z.clone())
        return plain(z, idx)

    tr = trust_region(
        recorded, torch.from_numpy(z0), residuals_only=probed, f_atol=mle.NLL_ATOL, radius0=mle.FIRST_RADIUS
    )
    return name, m, (t, ch, x, z0), bfgs_fit, tr, torch.cat(seen)


def test_refinement_reaches_bfgs_optimum_in_fewer_evaluations(refinement):
    name, _, _, bfgs_fit, tr, seen = refinement
    assert (tr.status == FitStatus.CONVERGED).all(), tr.status
    f_tr, f_bfgs = tr.f.numpy(), bfgs_fit.nll
    if name == "mmk":  # both reach the optimum (up to the trust region's NLL_ATOL)
        np.testing.assert_allclose(f_tr, f_bfgs, rtol=0, atol=mle.NLL_ATOL)
    else:  # BFGS stops early in E. coli's sloppy valleys; the trust region is never worse
        # (beyond 1e-4, the FIT_TOL solves' noise)
        assert (f_tr <= f_bfgs + 1e-4).all(), f_tr - f_bfgs
        assert (f_tr < f_bfgs - 1e-3).any(), "and sometimes better"
    assert tr.evaluations.double().mean() < 0.6 * bfgs_fit.evaluations.mean(), (tr.evaluations, bfgs_fit.evaluations)
    assert seen.abs().max() <= Z_BOX


def test_fit_method_trust_region_and_prior(refinement):
    name, m, (t, ch, x, z0), _, tr, _ = refinement
    if name != "mmk":
        pytest.skip("mmk shows it; E. coli's maximum a posteriori fits take longer")
    fit = mle.fit(m, t, ch, x, z0, method="trust-region")
    np.testing.assert_allclose(fit.nll, tr.f.numpy(), rtol=1e-12)
    assert np.abs(fit.z).max() <= Z_BOX
    # the prior's |z|^2 / 2 as residuals: the maximum a posteriori point BFGS finds
    a = mle.fit(m, t, ch, x, z0, prior=True)
    b = mle.fit(m, t, ch, x, z0, prior=True, method="trust-region")
    np.testing.assert_allclose(b.nll, a.nll, rtol=0, atol=mle.NLL_ATOL)
    # the prior for some sets only (their residuals carry P more entries, the others' zeros)
    some = np.arange(len(z0)) % 2 == 0
    c = mle.fit(m, t, ch, x, z0, prior=some, method="trust-region")
    np.testing.assert_allclose(c.nll, np.where(some, b.nll, fit.nll), rtol=0, atol=mle.NLL_ATOL)
    with pytest.raises(ValueError, match="method"):
        mle.fit(m, t, ch, x, z0, method="newton")


def test_absolute_tolerance_stops_near_the_optimum(refinement):
    """E. coli's refinements are sloppy: Gauss-Newton creeps along flat, curved valleys
    long after the NLL has stopped changing in any digit that matters. With f_atol =
    NLL_ATOL (as ``mle.fit`` runs it) every fit stops within 1e-3 of where the fit
    without it ends, in fewer evaluations."""
    _, m, (t, ch, x, z0), _, tr, _ = refinement
    res, plain = mle.residual_functions(m, t, ch, x, **mle._fit_options({}))
    tight = trust_region(res, torch.from_numpy(z0), residuals_only=plain)
    assert (tight.status == FitStatus.CONVERGED).all()
    assert (tr.f <= tight.f + 1e-3).all(), tr.f - tight.f
    assert tr.evaluations.sum() < tight.evaluations.sum(), (tr.evaluations, tight.evaluations)


def test_compiled_rounds_take_the_same_steps(refinement):
    """A refinement runs its rounds compiled (the native residuals' ``rounds``): the same
    points, values, counts and statuses as the rounds run from Python, for one problem
    and for a batch, with the prior's residuals too; with a deadline, a few rounds at a
    time, and it stops there."""
    name, m, (t, ch, x, z0), _, _, _ = refinement
    calls = []
    for prior in (False, True) if name == "mmk" else (False,):
        for i in range(len(z0)):
            one = (t[i : i + 1], ch[i : i + 1], x[i : i + 1])
            res, plain = mle.residual_functions(m, *one, prior=prior, **mle._fit_options({}))
            start = torch.from_numpy(z0[i : i + 1])
            options = dict(residuals_only=plain, f_atol=mle.NLL_ATOL, radius0=mle.FIRST_RADIUS)
            rounds = res.rounds
            compiled = trust_region(res, start, rounds=lambda s, k, f=rounds: calls.append(k) or f(s, k), **options)
            python = trust_region(res, start, **options)
            assert torch.equal(compiled.x, python.x) and torch.equal(compiled.f, python.f), (name, prior, i)
            for field in ("iterations", "evaluations", "status"):
                assert torch.equal(getattr(compiled, field), getattr(python, field)), (name, field, i)
    assert calls, "the compiled rounds ran"
    # a batch: problems that probe and problems that do not, in one compiled round
    batch, batch_plain = mle.residual_functions(m, t, ch, x, prior=np.arange(len(z0)) % 2 == 0, **mle._fit_options({}))
    options = dict(residuals_only=batch_plain, f_atol=mle.NLL_ATOL, radius0=mle.FIRST_RADIUS)
    compiled = trust_region(batch, torch.from_numpy(z0), rounds=batch.rounds, **options)
    python = trust_region(batch, torch.from_numpy(z0), **options)
    for field in ("x", "f", "iterations", "evaluations", "status"):
        assert torch.equal(getattr(compiled, field), getattr(python, field)), (name, field)
    if name == "mmk":
        return  # its fits end within a millisecond: E. coli's (about 50 rounds, 8 ms) show the deadline
    calls.clear()
    i = int(python.evaluations.argmax())  # the longest of E. coli's fits
    res, plain = mle.residual_functions(m, t[i : i + 1], ch[i : i + 1], x[i : i + 1], **mle._fit_options({}))
    late = trust_region(
        res,
        torch.from_numpy(z0[i : i + 1]),
        residuals_only=plain,
        rounds=lambda s, k: calls.append(k) or res.rounds(s, k),
        deadline=torch.tensor([time.time() + 3e-3], dtype=torch.float64),
    )
    assert late.status.tolist() == [FitStatus.DEADLINE] and torch.isfinite(late.f).all()
    assert calls and all(k < 100 for k in calls), calls  # a few rounds at a time, not all of them


def test_bounds_map_onto_the_box_on_both_sides():
    """A quantity on either prior bound is at |z| = Z_BOX exactly, as the u coordinate's
    fits (z+u) leave it and as to_z maps it: 1 - U_EPS rounds to a u whose quantile is
    1e-4 beyond the box, which refined estimates at an upper bound used to report."""
    from mechinfer.models import priors

    v = torch.tensor([[-mle.V_HALF, mle.V_HALF, 3 * mle.V_HALF, 0.0]], dtype=torch.float64)
    assert mle.v_to_z(v).tolist() == [[-Z_BOX, Z_BOX, -Z_BOX, 0.0]]  # reflected: 3 sqrt(3) mirrors to the lower bound
    bounds = torch.tensor([[0.0, 1e-3], [1.0, 1e3]], dtype=torch.float64)
    z = priors.to_z((priors.Uniform(0.0, 1.0), priors.LogUniform(1e-3, 1e3)), bounds)
    assert z.tolist() == [[-Z_BOX, -Z_BOX], [Z_BOX, Z_BOX]]


def test_eigendecomposition_matches_lapack():
    """_eigh (each accepted point's eigendecomposition, in place of np.linalg.eigh) on the
    matrices a fit meets: Gauss-Newton Hessians full rank, rank-deficient and sloppy
    (eigenvalues over ten decades), rounded to indefinite, with repeated eigenvalues, zero,
    1 x 1. Ascending eigenvalues as LAPACK's, orthonormal eigenvectors; NaN in, NaN out."""
    from mechinfer.fit.trust_region import _eigh

    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 8, 20, 31):
        J = rng.standard_normal((n + 5, n))
        B = rng.standard_normal((n, n))
        Q = np.linalg.qr(B)[0]
        for A in (
            J.T @ J,
            J[: max(1, n // 2)].T @ J[: max(1, n // 2)],
            (J * np.logspace(0, -5, n)).T @ (J * np.logspace(0, -5, n)),
            B + B.T,
            Q @ np.diag(np.repeat([1.0, 2.0], n)[:n]) @ Q.T,
            np.zeros((n, n)),
        ):
            A = (A + A.T) / 2
            w, V = np.empty(n), np.empty((n, n))
            _eigh(A, w, V)
            scale = max(np.abs(A).max(), 1e-300)
            np.testing.assert_allclose(w, np.linalg.eigvalsh(A), rtol=0, atol=1e-13 * scale)
            np.testing.assert_allclose(A @ V, V * w, rtol=0, atol=1e-13 * scale)
            np.testing.assert_allclose(V.T @ V, np.eye(n), rtol=0, atol=1e-13)
    A = np.ones((3, 3))
    A[0, 1] = A[1, 0] = np.nan
    w, V = np.empty(3), np.empty((3, 3))
    _eigh(A, w, V)
    assert np.isnan(w).all()
