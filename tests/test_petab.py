"""PEtab import (SPEC 11): the published log-likelihoods of two benchmark problems, exact
gradients of the NLL (native adjoint, torch autograd, finite differences), and clear
refusals of bad problems. The problems are vendored in tests/data/petab (BSD license)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mechinfer
from mechinfer import ModelSourceError, UnsupportedModelError

DATA = Path(__file__).parent / "data" / "petab"
PUBLISHED = {  # AMICI's benchmark tests, at the nominal parameters
    "Boehm_JProteomeRes2014": -138.22199693517703,
    "Fujita_SciSignal2010": 53.08377736998929,
}


def problem_yaml(name: str) -> Path:
    return DATA / name / f"{name}.yaml"


@pytest.fixture(scope="module")
def boehm():
    return mechinfer.load_petab(problem_yaml("Boehm_JProteomeRes2014"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_log_likelihood_at_nominal_equals_the_published_value(name):
    problem = mechinfer.load_petab(problem_yaml(name))
    # the torch backend: no compilation in the fast tier (the native one is checked below)
    ll = problem.log_likelihood(backend="torch")
    assert abs(ll - PUBLISHED[name]) < 0.01, (name, ll, PUBLISHED[name])


def test_problem_fields_follow_the_tables(boehm):
    table = pd.read_csv(DATA / "Boehm_JProteomeRes2014" / "parameters_Boehm_JProteomeRes2014.tsv", sep="\t")
    estimated = table[table["estimate"] == 1]
    m = boehm.model
    assert m.parameter_names == tuple(estimated["parameterId"])
    np.testing.assert_allclose(boehm.nominal, estimated["nominalValue"].to_numpy())
    for q, (_, row) in zip(m.quantities, estimated.iterrows()):
        assert q.prior.log == (row["parameterScale"] in ("log", "log10"))
        assert (q.prior.low, q.prior.high) == (row["lowerBound"], row["upperBound"])
    assert len(boehm.design) == len(boehm.measurements) == 48
    assert list(boehm.measurements.columns) == ["experiment", "t", "channel", "value"]
    assert set(boehm.measurements["channel"]) == {"pSTAT5A_rel", "pSTAT5B_rel", "rSTAT5A_rel"}
    assert m.T == boehm.design["time"].max() == 240.0
    # a batch of thetas gives one log-likelihood each; the nominal row equals the scalar
    theta = np.vstack([boehm.nominal, m.sample_prior(2, seed=3)])
    ll = boehm.log_likelihood(theta, backend="torch")
    assert ll.shape == (3,)
    assert ll[0] == pytest.approx(boehm.log_likelihood(backend="torch"), abs=1e-9)
    assert np.all(ll[1:] < ll[0])  # prior draws fit the data worse than the published fit


def test_auto_backend_takes_torch_until_the_native_code_is_built(boehm, tmp_path, monkeypatch):
    from mechinfer.solver import native

    if boehm.model._fingerprint() in native._SYSTEMS:
        pytest.skip("this process has loaded the native code already")
    monkeypatch.setenv("MECHINFER_CACHE", str(tmp_path))  # a machine that never compiled it
    assert boehm.backend() == "torch"
    assert boehm.backend("native") == "native"


def test_fujita_channels_name_observable_and_condition():
    problem = mechinfer.load_petab(problem_yaml("Fujita_SciSignal2010"))
    assert len(problem.conditions) == 6
    assert all("@" in c for c in problem.measurements["channel"])
    assert set(problem.design["condition"]) == set(problem.conditions)


# Finite differences of an adaptive solve move its step sizes too, which the exact
# gradient (of the discrete solution along its steps) does not see: at the problems'
# default tolerance (rtol 1e-8) that noise reaches 1e-4 of Fujita's gradient at nominal.
# The comparison runs both at rtol 1e-12, where it is below 1e-6.
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def _solved_draws(problem, n: int, seed: int) -> np.ndarray:
    """n prior draws whose NLL is finite at the tight tolerance (wide PEtab priors make
    some solves fail)."""
    draws = problem.model.sample_prior(8 * n, seed=seed)
    ll = problem.log_likelihood(draws, backend="native", **TIGHT)
    keep = draws[np.isfinite(ll)][:n]
    assert len(keep) == n
    return keep


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_exact_gradients_agree_with_finite_differences_and_across_backends(name):
    problem = mechinfer.load_petab(problem_yaml(name))
    theta = np.vstack([problem.nominal, _solved_draws(problem, 3, seed=7)])
    # native adjoint and autograd through the torch steps: the same algorithm, the same numbers
    nll_native, g_native = problem.nll_and_gradient(theta, backend="native")
    nll_torch, g_torch = problem.nll_and_gradient(theta, backend="torch")
    np.testing.assert_allclose(nll_native, nll_torch, rtol=1e-8)
    scale = np.abs(g_native).max(axis=1, keepdims=True)
    assert np.all(np.abs(g_native - g_torch) <= 1e-8 * scale), np.abs(g_native - g_torch).max(axis=1)
    assert nll_native[0] == pytest.approx(-PUBLISHED[name], abs=0.01)
    # central differences in log(theta) (every parameter here is positive): d NLL / d log theta_j
    _, g_tight = problem.nll_and_gradient(theta, backend="native", **TIGHT)
    step = 1e-5
    for row, th in enumerate(theta):
        fd = np.empty(len(th))
        for j in range(len(th)):
            up, down = th.copy(), th.copy()
            up[j] *= np.exp(step)
            down[j] *= np.exp(-step)
            ll = problem.log_likelihood(np.vstack([up, down]), backend="native", **TIGHT)
            fd[j] = -(ll[0] - ll[1]) / (2 * step)
        exact = g_tight[row] * th
        np.testing.assert_allclose(fd, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())


# ---------------------------------------------------------------- bad problems
def _copy(tmp_path: Path, name: str = "Boehm_JProteomeRes2014") -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    return folder / f"{name}.yaml"


def _edit(path: Path, edit) -> None:
    table = pd.read_csv(path, sep="\t")
    edit(table)
    table.to_csv(path, sep="\t", index=False)


def test_a_missing_visualization_table_is_no_obstacle(tmp_path):
    """Plot specifications change no number: a YAML that names one never published (as
    Lucarelli_CellSystems2018's does) loads, gives the reference log-likelihood and travels
    without it."""
    yaml_path = _copy(tmp_path)
    (yaml_path.parent / "visualizationSpecification_Boehm_JProteomeRes2014.tsv").unlink()
    assert "visualizationSpecification_Boehm_JProteomeRes2014.tsv" in yaml_path.read_text()
    assert mechinfer.load_petab(yaml_path).log_likelihood() == pytest.approx(-138.221997, abs=1e-4)
    m = mechinfer.load_model(yaml_path)
    assert "visualizationSpecification_Boehm_JProteomeRes2014.tsv" not in m.source.files
    assert len(m.source.files) == 6  # the YAML, the SBML model and four tables


def test_a_measurement_a_log_transformation_cannot_take_is_named(tmp_path):
    yaml_path = _copy(tmp_path)
    folder = yaml_path.parent
    _edit(
        folder / "observables_Boehm_JProteomeRes2014.tsv",
        lambda t: t.__setitem__("observableTransformation", ["log10", "lin", "lin"]),
    )
    measurements = folder / "measurementData_Boehm_JProteomeRes2014.tsv"
    first = pd.read_csv(measurements, sep="\t")["observableId"].eq("pSTAT5A_rel").idxmax()
    _edit(measurements, lambda t: t.__setitem__("measurement", t["measurement"].where(t.index != first, 0.0)))
    with pytest.raises(ModelSourceError, match=rf"measurement row {first + 1} \(pSTAT5A_rel\): 0 under .* log10"):
        mechinfer.load_petab(yaml_path)


def test_a_missing_table_is_named(tmp_path):
    yaml_path = _copy(tmp_path)
    (yaml_path.parent / "observables_Boehm_JProteomeRes2014.tsv").unlink()
    with pytest.raises(ModelSourceError, match="observables_Boehm_JProteomeRes2014.tsv"):
        mechinfer.load_petab(yaml_path)


def test_an_unknown_symbol_in_an_observable_formula_is_named(tmp_path):
    yaml_path = _copy(tmp_path)

    def edit(t):
        t.loc[0, "observableFormula"] = "pApB + not_a_species"

    _edit(yaml_path.parent / "observables_Boehm_JProteomeRes2014.tsv", edit)
    with pytest.raises(ModelSourceError, match="pSTAT5A_rel.*not_a_species"):
        mechinfer.load_petab(yaml_path)


def test_a_prior_with_lower_bound_not_below_upper_bound_is_named(tmp_path):
    yaml_path = _copy(tmp_path)

    def edit(t):
        t.loc[t["parameterId"] == "k_phos", "lowerBound"] = 1e6

    _edit(yaml_path.parent / "parameters_Boehm_JProteomeRes2014.tsv", edit)
    with pytest.raises(ModelSourceError, match="k_phos.*lowerBound"):
        mechinfer.load_petab(yaml_path)


def test_preequilibration_is_refused(tmp_path):
    yaml_path = _copy(tmp_path)

    def edit(t):
        t["preequilibrationConditionId"] = t["preequilibrationConditionId"].astype(object)
        t.loc[0, "preequilibrationConditionId"] = "model1_data1"

    _edit(yaml_path.parent / "measurementData_Boehm_JProteomeRes2014.tsv", edit)
    with pytest.raises(UnsupportedModelError, match="preequilibration"):
        mechinfer.load_petab(yaml_path)


# ---------------------------------------------------------------- objective priors
PRIORS = {  # parameterId: (objectivePriorType, objectivePriorParameters)
    "Epo_degradation_BaF3": ("parameterScaleNormal", "-1.5;2"),  # log10 x ~ N(-1.5, 2) on [-5, 5]
    "k_exp_hetero": ("logNormal", "-4;1"),  # ln x ~ N(-4, 1)
    "k_imp_homo": ("parameterScaleLaplace", "3;1.5"),  # log10 x ~ Laplace(3, 1.5) on [-5, 5]
    "k_phos": ("parameterScaleUniform", "-2;1"),  # log10 x uniform on [-2, 1]
    "k_exp_homo": ("parameterScaleUniform", np.nan),  # no parameters: the bounds
    "sd_pSTAT5A_rel": ("normal", "0.5;0.3"),  # x ~ N(0.5, 0.3) on [1e-5, 1e5]: linear, whatever the scale
    "sd_pSTAT5B_rel": ("laplace", "1;0.5"),  # x ~ Laplace(1, 0.5) on [1e-5, 1e5]
}


def _with_priors(tmp_path: Path, priors: dict) -> Path:
    yaml_path = _copy(tmp_path)

    def edit(t):
        t["objectivePriorType"] = [priors.get(p, ("", ""))[0] for p in t["parameterId"]]
        t["objectivePriorParameters"] = [priors.get(p, ("", ""))[1] for p in t["parameterId"]]
        t.replace("", np.nan, inplace=True)

    _edit(yaml_path.parent / "parameters_Boehm_JProteomeRes2014.tsv", edit)
    return yaml_path


def _truncated(dist, low: float, high: float):
    """The CDF of a scipy distribution truncated to [low, high]."""
    a, b = dist.cdf(low), dist.cdf(high)
    return lambda x: (dist.cdf(np.clip(x, low, high)) - a) / (b - a)


def test_objective_priors_follow_the_parameter_table(tmp_path):
    """SPEC 11: a parameter's prior is its objectivePriorType where the table gives one,
    truncated at its bounds (as the petab library truncates it); the log-likelihood is
    the likelihood's alone. Draws follow each distribution on its own scale, and their z
    is standard normal, as for a uniform prior."""
    from scipy import stats

    yaml_path = _with_priors(tmp_path, PRIORS)
    problem = mechinfer.load_petab(yaml_path)
    m = mechinfer.load_model(yaml_path)  # the problem's model, with its source (and so its measurements)
    assert problem.log_likelihood() == pytest.approx(PUBLISHED["Boehm_JProteomeRes2014"], abs=1e-4)
    names = list(m.parameter_names)
    assert m.priors[names.index("k_exp_homo")].describe() == "log-uniform(1e-05, 100000)"  # uniform, no parameters
    assert m.priors[names.index("k_phos")].describe() == "log-uniform(0.01, 10)"
    theta = m.sample_prior(20000, seed=0)
    col = lambda name: theta[:, names.index(name)]
    expected = {
        "Epo_degradation_BaF3": (np.log10(col("Epo_degradation_BaF3")), _truncated(stats.norm(-1.5, 2), -5, 5)),
        "k_exp_hetero": (np.log(col("k_exp_hetero")), _truncated(stats.norm(-4, 1), np.log(1e-5), np.log(1e5))),
        "k_imp_homo": (np.log10(col("k_imp_homo")), _truncated(stats.laplace(3, 1.5), -5, 5)),
        "k_phos": (np.log10(col("k_phos")), stats.uniform(-2, 3).cdf),
        "sd_pSTAT5A_rel": (col("sd_pSTAT5A_rel"), _truncated(stats.norm(0.5, 0.3), 1e-5, 1e5)),
        "sd_pSTAT5B_rel": (col("sd_pSTAT5B_rel"), _truncated(stats.laplace(1, 0.5), 1e-5, 1e5)),
    }
    for name, (x, cdf) in expected.items():
        assert stats.kstest(x, cdf).pvalue > 1e-3, name
    z = m.to_z(theta)
    assert np.abs(z.mean(0)).max() < 0.05 and np.abs(z.std(0) - 1).max() < 0.05
    np.testing.assert_allclose(m.from_z(z), theta, rtol=1e-9)
    low, high = np.array([[q.prior.low, q.prior.high] for q in m.quantities]).T
    assert ((theta >= low) & (theta <= high)).all()
    # fits move through the truncated priors' maps: the trust region in z, BFGS from the
    # prior in its u coordinate
    from mechinfer.evaluate import baseline
    from mechinfer.fit import mle

    data = baseline.real_data(m)
    start = np.zeros((1, m.n_parameters))
    before = mle.nll(m, data["t"], data["channel"], data["value"], start)[0]
    for method, hessian in (("trust-region", "gauss-newton"), ("bfgs", "identity")):
        fit = mle.fit(m, data["t"], data["channel"], data["value"], start, method=method, hessian=hessian, max_iter=50)
        assert np.isfinite(fit.nll[0]) and fit.nll[0] < before - 10, (method, fit.nll, before)
        gained = problem.log_likelihood(fit.theta[0]) - problem.log_likelihood(m.from_z(start)[0])
        assert gained == pytest.approx(before - fit.nll[0], rel=1e-5), method  # the NLL leaves out constants


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        (("gamma", "1;1"), "k_phos: unknown objectivePriorType 'gamma'"),
        (("normal", np.nan), "k_phos: objectivePriorType normal needs objectivePriorParameters"),
        (("parameterScaleNormal", "0;0"), "k_phos: objectivePriorType parameterScaleNormal needs a scale > 0"),
        (("parameterScaleUniform", "6;7"), "k_phos: objectivePriorType parameterScaleUniform .* nothing within"),
        (("normal", "1e9;1"), "k_phos: objectivePriorType normal: .*no probability between its bounds"),
    ],
)
def test_a_bad_objective_prior_is_named(tmp_path, prior, message):
    with pytest.raises(ModelSourceError, match=message):
        mechinfer.load_petab(_with_priors(tmp_path, {"k_phos": prior}))


def test_a_record_made_with_other_priors_is_refused(tmp_path):
    """A dataset or checkpoint of the same files made before their objective priors were
    read (no ``priors`` recorded) or with other priors speaks another z: refused by
    name, where the same record with these priors passes."""
    from mechinfer.models.sources import check_model, source_record

    m = mechinfer.load_model(_with_priors(tmp_path, PRIORS))
    record = source_record(m)
    check_model(m, record, "checkpoint c")
    older = {k: v for k, v in record.items() if k != "priors"}
    with pytest.raises(ValueError, match="checkpoint c predates the objective priors"):
        check_model(m, older, "checkpoint c")
    other = dict(record, priors=["log-uniform(1e-05, 100000)"] * m.n_parameters)
    with pytest.raises(ValueError, match="made with Epo_degradation_BaF3 ~ log-uniform"):
        check_model(m, other, "checkpoint c")
    short = dict(record, priors=record["priors"][:-1])  # not one per parameter: named, not a StopIteration
    with pytest.raises(ValueError, match=f"checkpoint c records {m.n_parameters - 1} priors; .* has {m.n_parameters}"):
        check_model(m, short, "checkpoint c")
    plain = mechinfer.load_model(problem_yaml("Boehm_JProteomeRes2014"))  # no objective priors: old records pass
    check_model(plain, {k: v for k, v in source_record(plain).items() if k != "priors"}, "checkpoint c")
