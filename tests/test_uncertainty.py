"""Intervals and goodness of fit (SPEC 9): the Laplace approximation in z behind
``est.infer``, on cases whose answer is known, and its recalibration stored with a
checkpoint."""

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats

import mechinfer
import mechinfer.estimate.estimator
from mechinfer.estimate import recalibration, uncertainty
from mechinfer.estimate import refine as stage
from mechinfer.evaluate import baseline
from mechinfer.fit import mle

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


def test_recalibration_corrects_heavy_tails_and_leaves_the_prior_alone():
    """Split-conformal multipliers (mechinfer.estimate.recalibration) from one synthetic
    set whose errors have heavier tails than the Gaussian cover the truth at the level on
    another, where the normal quantile does not; a direction with sd = 1 (the prior's)
    keeps the normal quantile exactly."""
    rng = np.random.default_rng(0)
    levels = recalibration.LEVELS

    def draw(n):  # 3 parameters: sd 0.1 and 0.5 with t(3) errors, sd 1 (the prior) with N(0, 1)
        sd = np.array([0.1, 0.5, 1.0])
        err = np.column_stack([rng.standard_t(3, (n, 2)) * np.sqrt(1 / 3), rng.standard_normal(n)]) * sd
        return np.zeros((n, 3)), np.broadcast_to(np.diag(sd**2), (n, 3, 3)), err, np.tile(sd, (n, 1))

    center, cov, z_true, sd = draw(4000)
    table = recalibration.conformal_table(center, cov, z_true)
    rec = recalibration.Recalibration("test", 4000, levels, table, table)
    center, cov, z_true, sd = draw(20000)
    for level in (0.68, 0.95, 0.99):
        q = rec.scale(level, sd, np.zeros(len(sd), bool))
        np.testing.assert_array_equal(q[:, 2], special.ndtri(0.5 + 0.5 * level))  # the prior's direction
        inside = np.abs(z_true - center) <= q * sd
        np.testing.assert_allclose(inside[:, :2].mean(axis=0), level, atol=0.012)
        normal = np.abs(z_true - center) <= special.ndtri(0.5 + 0.5 * level) * sd
        if level == 0.99:
            assert (normal[:, :2].mean(axis=0) < level - 0.005).all()  # what the recalibration corrects


def test_determined_parameters_get_the_determined_cases_table():
    """Mondrian recalibration: where determined cases (sd^2 <= DETERMINED_VARIANCE) err
    with heavier tails than the others, the pooled table undercovers them and their own
    table does not; the others keep the pooled table. A parameter with too few determined
    cases of its own takes the table of every parameter's determined cases together, and
    with too few of those in all, its pooled table."""
    rng = np.random.default_rng(1)
    levels = recalibration.LEVELS

    def draw(n, share2=0.008):
        """Parameter 0: a third determined (sd 0.3, t(2) errors), the rest sd 0.8 with
        N(0, 1); parameter 1: never determined; parameter 2: as parameter 0 with a share
        ``share2`` determined (0.008 of 6000: 48, fewer than MIN_CASES)."""
        cols_sd, cols_err, dets = [], [], []
        for share in (1 / 3, 0.0, share2):
            det = rng.random(n) < share
            sd = np.where(det, 0.3, 0.8)
            cols_sd.append(sd)
            cols_err.append(np.where(det, rng.standard_t(2, n) * 0.8, rng.standard_normal(n)) * sd)
            dets.append(det)
        sd, err, det = np.column_stack(cols_sd), np.column_stack(cols_err), np.column_stack(dets)
        cov = np.zeros((n, 3, 3))
        for j in range(3):
            cov[:, j, j] = sd[:, j] ** 2
        return np.zeros((n, 3)), cov, err, sd, det

    center, cov, z_true, sd, det = draw(6000)
    assert 0 < det[:, 2].sum() < recalibration.MIN_CASES
    pooled, determined = recalibration.conformal_tables(center, cov, z_true)
    across = recalibration.across_parameters(center, cov, z_true)
    np.testing.assert_array_equal(determined[:, 1], across[:, 1])  # too few of its own: all parameters'
    np.testing.assert_array_equal(determined[:, 2], across[:, 2])
    assert not np.array_equal(determined[:, 0], across[:, 0])  # enough of its own
    few = draw(6000, share2=0.0)
    few[1][40:, 0, 0] = 0.64  # 40 determined cases in all (parameter 0's first 40)
    pooled_few, determined_few = recalibration.conformal_tables(*few[:3])
    np.testing.assert_array_equal(determined_few, pooled_few)  # too few in all: the pooled tables

    both = recalibration.Recalibration("test", 6000, levels, pooled, pooled, determined, determined)
    only_pooled = recalibration.Recalibration("test", 6000, levels, pooled, pooled)
    center, cov, z_true, sd, det = draw(30000, share2=0.05)
    for level in (0.9, 0.95):
        inside = lambda rec, level=level: np.abs(z_true - center) <= rec.scale(level, sd, np.ones(len(sd), bool)) * sd
        for j in (0, 2):  # parameter 2 through the table of all parameters' determined cases
            assert inside(only_pooled)[det[:, j], j].mean() < level - 0.015  # what the determined table corrects
            np.testing.assert_allclose(inside(both)[det[:, j], j].mean(), level, atol=0.015)
        np.testing.assert_allclose(inside(both)[~det], inside(only_pooled)[~det])  # unchanged


def test_a_checkpoint_carries_its_recalibration(tmp_path, run_cli, caplog):
    """`mechinfer calibrate` writes calibration.json into a checkpoint, which
    load_estimator reads back and est.infer uses; a table made for other weights is
    ignored with a warning; a broken one is refused."""
    import json
    import shutil

    ckpt = tmp_path / "mmk"
    shutil.copytree(est_dir := mechinfer.estimate.estimator.shipped_checkpoint("mmk"), ckpt)
    (ckpt / recalibration.FILE).unlink()
    assert mechinfer.load_estimator(str(ckpt)).recalibration is None  # the normal quantile
    status, out, err = run_cli("calibrate", "--checkpoint", str(ckpt), "--samples", "256")
    assert status == 0 and "intervals recalibrated on 256 simulated experiments" in out, err
    est, shipped = mechinfer.load_estimator(str(ckpt)), mechinfer.load_estimator(est_dir)
    assert est.recalibration.samples == 256 and est.recalibration.checkpoint_id == est.checkpoint_id
    m = est.model
    t, ch, value = _design(m, 14)
    res = est.infer(t, ch, value)
    assert not np.allclose(res.upper, shipped.infer(t, ch, value).upper)  # another table, other intervals
    sd = np.sqrt(np.diagonal(res.cov_z, axis1=1, axis2=2))
    q = est.recalibration.scale(0.95, sd, [False])
    np.testing.assert_allclose(res.upper, m.from_z(res.center + q * sd), rtol=1e-12)
    data = json.loads((ckpt / recalibration.FILE).read_text())
    assert len(data["network_determined"]) == len(data["refined_determined"]) == len(data["levels"])
    old = {k: v for k, v in data.items() if not k.endswith("_determined")}  # a file from before them
    (ckpt / recalibration.FILE).write_text(json.dumps(old))
    pooled = mechinfer.load_estimator(str(ckpt)).recalibration
    assert pooled.network_determined is None
    np.testing.assert_allclose(pooled.scale(0.95, sd, [False]), _multiplier(pooled, "network", 0.95, sd), rtol=1e-12)
    (ckpt / recalibration.FILE).write_text(json.dumps({**data, "refined_determined": data["refined"][:3]}))
    with pytest.raises(ValueError, match="does not hold"):
        mechinfer.load_estimator(str(ckpt))
    (ckpt / recalibration.FILE).write_text(json.dumps({**data, "checkpoint_id": "mmk-inference-000000000000"}))
    assert mechinfer.load_estimator(str(ckpt)).recalibration is None
    assert "was made for mmk-inference-000000000000" in caplog.text
    (ckpt / recalibration.FILE).write_text(json.dumps({**data, "network": data["network"][:3]}))
    with pytest.raises(ValueError, match="does not hold"):
        mechinfer.load_estimator(str(ckpt))
    (ckpt / recalibration.FILE).write_text(json.dumps({"checkpoint_id": data["checkpoint_id"]}))
    with pytest.raises(ValueError, match="lacks its tables"):
        mechinfer.load_estimator(str(ckpt))
    (ckpt / recalibration.FILE).write_text('{"checkpoint_id": ')
    with pytest.raises(ValueError, match="is not readable JSON"):
        mechinfer.load_estimator(str(ckpt))
    status, _, err = run_cli("calibrate", "--checkpoint", str(tmp_path / "none"))
    assert status == 2 and "is not a mechinfer checkpoint" in err and "Traceback" not in err


def _multiplier(rec, kind, level, sd):
    """The multipliers (B, P) of the sd that rec's ``kind`` ("network" or "refined") tables
    give at ``level``: n_L + (Q_L - n_L) (1 - sd^2), Q_L interpolated between its levels,
    from the determined cases' table where sd^2 <= 1/4 (the module's formula)."""
    n_l = special.ndtri(0.5 + 0.5 * level)
    q_at = lambda table: np.array([np.interp(level, rec.levels, col) for col in table.T])
    pooled, determined = getattr(rec, kind), getattr(rec, f"{kind}_determined")
    q_l = np.where(sd**2 <= 0.25, q_at(pooled if determined is None else determined), q_at(pooled))
    return n_l + (q_l - n_l) * np.clip(1.0 - sd**2, 0.0, 1.0)


def test_each_estimate_gets_the_recalibration_of_its_own_kind():
    """The network's estimates get the network's multipliers, refined ones the
    refinement's: in Recalibration.scale, in est.infer (a batch of both, refine "auto")
    and in the served answers."""
    from mechinfer.serve import handlers as service

    levels = recalibration.LEVELS
    full = lambda q: np.full((len(levels), 2), q)
    rec = recalibration.Recalibration("test", 100, levels, full(3.0), full(5.0))
    sd = np.array([[0.0, 0.6], [0.0, 0.6]])
    n_l, w = special.ndtri(0.95), 1.0 - 0.36
    np.testing.assert_allclose(
        rec.scale(0.9, sd, [True, False]), [[5.0, n_l + (5.0 - n_l) * w], [3.0, n_l + (3.0 - n_l) * w]], rtol=1e-12
    )
    # with the determined cases' tables: a determined parameter (sd 0) takes its kind's
    rec = recalibration.Recalibration("test", 100, levels, full(3.0), full(5.0), full(7.0), full(9.0))
    np.testing.assert_allclose(
        rec.scale(0.9, sd, [True, False]), [[9.0, n_l + (5.0 - n_l) * w], [7.0, n_l + (3.0 - n_l) * w]], rtol=1e-12
    )

    est = mechinfer.load_estimator("mmk")
    m, rec = est.model, est.recalibration
    assert not np.allclose(rec.network, rec.refined)  # the shipped tables differ: a swap shows
    t, ch, value = _design(m, 14)
    bad = value.copy()
    bad[0, 3:6] += 4.0  # the network's estimate cannot fit it: "auto" refines it
    res = est.infer(np.vstack([t, t]), np.vstack([ch, ch]), np.vstack([value, bad]), refine="auto")
    assert list(res.refine_status) == ["skipped", "converged"]
    sd = np.sqrt(np.diagonal(res.cov_z, axis1=1, axis2=2))
    q = np.vstack([_multiplier(rec, "network", 0.95, sd[:1]), _multiplier(rec, "refined", 0.95, sd[1:])])
    np.testing.assert_allclose(res.lower, m.from_z(res.center - q * sd), rtol=1e-9)
    np.testing.assert_allclose(res.upper, m.from_z(res.center + q * sd), rtol=1e-9)

    plain = service.infer(est, t, ch, bad)
    refined = service.refine(est, t, ch, bad, plain["z"])
    first = lambda case: {k: v[0] for k, v in case.items() if k != "timing_ms"}
    for row, kind in ((first(plain), "network"), (stage.combine(first(plain), first(refined)), "refined")):
        got = service.answer(est, row, 0.95, row.get("refine_status", "not_requested"), {})
        sd = np.sqrt(np.diagonal(row["cov_z"]))[None]
        want = m.from_z(row["center"][None] + _multiplier(rec, kind, 0.95, sd) * sd)[0]
        np.testing.assert_allclose([got["intervals"][n][1] for n in m.parameter_names], want, rtol=1e-9)


def test_polish_stops_each_case_at_its_own_deadline(monkeypatch):
    """A deadline per case (a Refiner batch holds cases of several requests): a case whose
    deadline passed before its fit started keeps the network's z ("deadline", kept), the
    others of the batch are fitted. A fit its deadline stops before its first step (the
    round that evaluates the starts ran past it) keeps its start too, as kept."""
    import time
    from types import SimpleNamespace

    from mechinfer.fit import schedule

    est = mechinfer.load_estimator("mmk")
    t, ch, value = (np.vstack([a, a]) for a in _design(est.model, 14))
    z = est.estimate_z(t, ch, value)
    now = time.time()
    r = est.polish(t, ch, value, z, deadline=np.array([now - 1.0, now + 60.0]))
    assert list(r.refine_status) == ["deadline", "converged"] and list(r.kept) == [True, False]
    assert (r.z[0] == z[0]).all() and not np.allclose(r.z[1], z[1])

    ticks = iter([now])  # the clock reads `now` once (the queue's check), then 10 s later
    clock = SimpleNamespace(time=lambda: next(ticks, now + 10.0), perf_counter=time.perf_counter)
    monkeypatch.setattr(schedule, "time", clock)
    r = est.polish(t, ch, value, z, deadline=now + 5.0)
    assert list(r.refine_status) == ["deadline", "deadline"] and list(r.kept) == [True, True]
    assert (r.z == z).all()


def test_a_rejected_fit_gets_its_information_divided_by_its_misfit():
    """At the truth, observations with 5x the model's noise fail the goodness-of-fit
    test: the covariance is then (J^T J / s^2 + I)^-1 with s^2 the residuals' variance
    (the statistic over its degrees of freedom left, about 25), computed here directly;
    a fit that passes keeps the plain approximation; a fit whose residuals are 20 sigma
    (s^2 > MISFIT_MAX) gets the prior's covariance and centre: nothing determined."""
    m = mechinfer.get_model("mmk")
    t, ch, value = _design(m, 48, seed=3)
    clean = np.take_along_axis(m.simulate(THETA, t[0]), ch[..., None], axis=2)[..., 0]
    z = m.to_z(THETA)
    good = uncertainty.laplace(m, t, ch, value, z)
    assert good.gof_pvalue[0] > uncertainty.MISFIT_PVALUE
    r, jac, _ = mle.residual_jacobian(m, torch.as_tensor(z), *mle._tensors(t, ch, value), **mle.fit_tolerances(m))
    plain = np.linalg.inv(jac[0].numpy().T @ jac[0].numpy() + np.eye(4))
    np.testing.assert_allclose(good.cov_z[0], plain, rtol=1e-8, atol=1e-12)

    noisy = clean + 5.0 * (value - clean)
    bad = uncertainty.laplace(m, t, ch, noisy, z)
    assert bad.gof_pvalue[0] < 1e-6
    s2 = 2 * bad.nll[0] / (48 - bad.p_eff[0])
    assert 10 < s2 < 50, s2
    r, jac, _ = mle.residual_jacobian(m, torch.as_tensor(z), *mle._tensors(t, ch, noisy), **mle.fit_tolerances(m))
    j, rr = jac[0].numpy(), r[0].numpy()
    cov = np.linalg.inv(j.T @ j / s2 + np.eye(4))
    np.testing.assert_allclose(bad.cov_z[0], cov, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(bad.center[0], z[0] - cov @ (j.T @ rr / s2 + z[0]), rtol=1e-8, atol=1e-12)
    assert (np.diag(bad.cov_z[0]) > np.diag(plain)).all()
    # sd wider by about s where the data dominate (S_0, observed from t = 0)
    assert np.sqrt(bad.cov_z[0, 2, 2] / plain[2, 2]) > 0.5 * np.sqrt(s2)

    wrong = uncertainty.laplace(m, t, ch, clean + 20.0 * m.sigma[ch], z)
    assert 2 * wrong.nll[0] / (48 - wrong.p_eff[0]) > uncertainty.MISFIT_MAX
    np.testing.assert_array_equal(wrong.cov_z[0], np.eye(4))
    np.testing.assert_array_equal(wrong.center[0], 0.0)
    assert not stage.determined(wrong.cov_z).any()
    assert stage.determined(good.cov_z)[0, 2]


def test_determined_says_which_parameters_the_observations_pin_down():
    """``determined`` is the posterior variance in z at most DETERMINED_VARIANCE of the
    prior's, per parameter: on mmk test sets the initial substrate S_0 (observed from
    t = 0) is determined nearly always and Km (only its ratio to the substrate matters
    while the enzyme runs saturated) nearly never; refined answers say it too."""
    est = mechinfer.load_estimator("mmk")
    rows, _ = baseline.load_test_set("mmk", None, 32)
    res = est.infer(rows["t"], rows["channel"], rows["value"], refine=True)
    variance = np.diagonal(res.cov_z, axis1=1, axis2=2)
    assert (res.determined == (variance <= stage.DETERMINED_VARIANCE)).all()
    share = dict(zip(est.model.parameter_names, res.determined.mean(axis=0)))
    assert share["S_0"] > 0.9 and share["Km"] < 0.1, share


def test_recalibration_refines_within_its_time_budget(caplog):
    """A spent budget stops the refined table's experiments (the fits running then stop
    and their experiments are left out; the network's table keeps all of them) and says
    so; a sufficient one refines them all."""
    import logging

    est = mechinfer.load_estimator("mmk")
    n = 2 * recalibration.REFINE_CHUNK + 5
    with caplog.at_level(logging.WARNING, logger="mechinfer.estimate.recalibration"):
        spent = recalibration.recalibrate(est, samples=n, budget_s=0.0)
    assert spent.samples < recalibration.REFINE_CHUNK
    assert f"after {recalibration.REFINE_CHUNK} of {n} experiments" in caplog.text
    whole = recalibration.recalibrate(est, samples=n, budget_s=3600.0)
    assert whole.samples == n
    np.testing.assert_array_equal(whole.network, spent.network)


def test_recalibration_refines_in_ray_tasks_as_it_does_here(ray_local, caplog, monkeypatch):
    """With a checkpoint and a connected Ray of 2 CPUs, the refined table's experiments
    are refined in Ray tasks: the same tables as in process (to float rounding); a spent budget leaves every
    chunk but the first out (each task checks the deadline before it starts) and says so.
    Small chunks and tables from 8 cases, so that 21 experiments make three tasks and
    tables other than the normal quantile."""
    import logging

    monkeypatch.setattr(recalibration, "REFINE_CHUNK", 8)
    monkeypatch.setattr(recalibration, "MIN_CASES", 8)
    checkpoint = mechinfer.estimate.estimator.shipped_checkpoint("mmk")
    est = mechinfer.load_estimator(checkpoint)
    n = 21
    here = recalibration.recalibrate(est, samples=n, budget_s=3600.0)
    with caplog.at_level(logging.INFO, logger="mechinfer.estimate.recalibration"):
        tasks = recalibration.recalibrate(est, samples=n, budget_s=3600.0, checkpoint=checkpoint)
    assert "3 Ray tasks of up to 8 experiments" in caplog.text
    assert tasks.samples == here.samples == n
    normal = special.ndtri(0.5 + 0.5 * recalibration.LEVELS)[:, None]
    for name in ("network", "refined", "network_determined", "refined_determined"):
        assert not np.allclose(getattr(here, name), normal)  # tables from the cases, not the fallback
        # equal up to the float sums of the network's forward pass (a Ray worker runs one torch thread)
        np.testing.assert_allclose(getattr(tasks, name), getattr(here, name), rtol=1e-6)
    with caplog.at_level(logging.WARNING, logger="mechinfer.estimate.recalibration"):
        spent = recalibration.recalibrate(est, samples=n, budget_s=0.0, checkpoint=checkpoint)
    assert spent.samples < 8
    assert f"after 8 of {n} experiments" in caplog.text


def test_covariance_of_an_ill_conditioned_information_stays_a_covariance():
    """Sensitivities of 1e8 along nearly parallel directions (a PEtab problem's parameters
    spanning ten decades): inverting A^T A + I in float64 gives negative variances here,
    the factorisation of [A; I] the exact ones (60-digit arithmetic)."""
    rng = np.random.default_rng(0)
    u, w, x = rng.normal(size=(3, 30))
    a = np.stack([u * 1e8, u * 1e8 + 0.5 * w, x, u * 1e8 + 1e-3 * x], 1)
    assert (np.diag(np.linalg.inv(a.T @ a + np.eye(4))) < 0).any()  # what the direct inverse gives
    mpmath.mp.dps = 60
    m = mpmath.matrix(a.tolist())
    exact = (m.T * m + mpmath.eye(4)) ** -1
    exact = np.array([[float(exact[i, j]) for j in range(4)] for i in range(4)])
    z = torch.zeros(1, 4, dtype=torch.float64)
    _, cov, p_eff = uncertainty._newton_step(z, torch.from_numpy(a)[None], z, torch.ones(1, dtype=torch.bool))
    np.testing.assert_allclose(cov[0], exact, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(p_eff[0], 4 - np.trace(exact), rtol=1e-9)
    # BFGS's Gauss-Newton start takes the same inverse
    h0 = mle.information_inverse(torch.from_numpy(a)[None])[0].numpy()
    np.testing.assert_allclose(h0, exact, rtol=1e-6, atol=1e-12)


def test_coverage_in_budgeted_batches_is_the_one_batchs():
    """The evaluate stage's coverage with a time budget (``calibrate(..., budget_s)``)
    takes the test rows CHUNK at a time, each batch with the interval scale of its own
    rows: with room for every batch it measures what one batch of all rows does, and past
    its budget it stops after the first, measured on those rows alone."""
    from mechinfer.evaluate import calibration

    est = mechinfer.load_estimator("mmk")
    m = est.model
    rows, _ = baseline.load_test_set(m, None, calibration.CHUNK + 16)
    whole = calibration.calibrate(m, est, rows, n_boot=20)
    parts = calibration.calibrate(m, est, rows, n_boot=20, budget_s=1e9)
    n = calibration.CHUNK + 16
    assert (whole["n_samples"], whole["batch"], parts["n_samples"], parts["batch"]) == (n, n, n, calibration.CHUNK)
    assert parts["coverage"] == whole["coverage"] and parts["coverage_95_determined"] == whole["coverage_95_determined"]
    for mode in calibration.MODES:
        for level in (0.5, 0.95):
            for a, b in zip(parts["_runs"][mode].intervals(m, level), whole["_runs"][mode].intervals(m, level)):
                np.testing.assert_allclose(a, b, rtol=1e-6)
    first = calibration.calibrate(m, est, rows, n_boot=20, budget_s=1e-9)
    alone = calibration.calibrate(m, est, {k: v[: calibration.CHUNK] for k, v in rows.items()}, n_boot=20)
    assert first["n_samples"] == len(first["_rows"]["t"]) == len(first["_runs"]["always"].z) == calibration.CHUNK
    assert first["coverage"] == alone["coverage"] and first["offered"] == n and alone["offered"] == calibration.CHUNK


def test_coverage_outside_its_range_says_whether_n_can_tell():
    """The calibration report lists the determined parameters whose 95% coverage falls
    outside [0.90, 0.98], each with the two-sided binomial p-value of its share against
    0.95: 17 of 20 (p = 0.075) and 4 of 4 (p = 1) are what calibrated intervals give at
    such n; 160 of 200 (p = 6e-14) is not."""
    from mechinfer.evaluate import calibration

    c = {
        "parameters": ["a", "b", "c", "d", "e"],
        "coverage_95_determined": {
            kind: {"coverage": [0.85, 0.8, 1.0, 0.95, None], "samples": [20, 200, 4, 100, 0]}
            for kind in ("network", "refined")
        },
    }
    lines = []
    calibration._write_determined(lines.append, c)
    text = "".join(lines)
    assert "Refined, determined: 1 of 4 parameters within [0.90, 0.98]" in text
    assert "a 0.850 (n=20, binomial p = 0.075 against 0.95)" in text
    assert "b 0.800 (n=200, binomial p = 6.4e-14 against 0.95)" in text
    assert "c 1.000 (n=4, binomial p = 1 against 0.95)" in text and "determined in no test sample: e" in text
