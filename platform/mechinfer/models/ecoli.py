"""E. coli overflow metabolism by acetate cycling (Anane et al., 2017), batch phase
(SPEC 2.2). Stiff: oxygen-limited draws put eigenvalues near 1e9 per hour on DOT, so the
default solver is the Rosenbrock method."""

from .base import Model, Quantity, pos
from .priors import LogUniform, Uniform, around_nominal

NOMINAL = {
    "Kap": 0.5052,
    "Ksa": 0.0134,
    "Ko": 0.0001,
    "Ks": 0.0370,
    "Kia": 1.2399,
    "Kis": 2.1231,
    "pAmax": 0.2268,
    "qAmax": 0.1148,
    "qm": 0.0129,
    "qSmax": 0.6356,
    "Yas": 0.9097,
    "Yoa": 0.5440,
    "Yxa": 0.5718,
    "Yem": 0.5333,
    "Yos": 1.5620,
    "Yxsof": 0.2268,
}
# Above 0.8 the carbon balance breaks and the model produces oxygen.
YEM_PRIOR = LogUniform(0.27, 0.75)
UNITS = {
    "Kap": "g/g/h",
    "Ksa": "g/L",
    "Ko": "%",
    "Ks": "g/L",
    "Kia": "g/L",
    "Kis": "g/g/h",
    "pAmax": "g/g/h",
    "qAmax": "g/g/h",
    "qm": "g/g/h",
    "qSmax": "g/g/h",
    "Yas": "g/g",
    "Yoa": "g/g",
    "Yxa": "g/g",
    "Yem": "g/g",
    "Yos": "g/g",
    "Yxsof": "g/g",
}


def rates(s, p, c):
    S, A, DOT = pos(s.S), pos(s.A), pos(s.DOT)
    X = s.X
    qS = p.qSmax / (1 + A / p.Kia) * S / (S + p.Ks)
    qSof = p.pAmax * qS / (qS + p.Kap)
    pA = qSof * p.Yas
    qSox = (qS - qSof) * DOT / (DOT + p.Ko)
    qSan = (qSox - p.qm) * p.Yem * c.Cx / c.Cs
    qsA = p.qAmax / (1 + qS / p.Kis) * A / (A + p.Ksa)
    qA = pA - qsA
    mu = (qSox - p.qm) * p.Yem + qsA * p.Yxa + qSof * p.Yxsof
    qO = p.Yos * (qSox - qSan) + qsA * p.Yoa
    return {
        "X": mu * X,
        "S": -qS * X,
        "A": qA * X,
        "DOT": c.Kla * (c.DOTstar - s.DOT) - qO * X * c.H,
        "DOTm": (3600 / c.tau) * (s.DOT - s.DOTm),
    }


def initial(p):
    return {"X": p.X_0, "S": p.S_0, "A": p.A_0, "DOT": p.DOT_0, "DOTm": p.DOT_0}


MODEL = Model(
    name="ecoli",
    description="E. coli overflow metabolism by acetate cycling (Anane et al., 2017), batch phase",
    states=("X", "S", "A", "DOT", "DOTm"),
    state_units=("g/L", "g/L", "g/L", "%", "%"),
    channels=("X", "S", "A", "DOTm"),
    quantities=(
        *(
            Quantity(name, YEM_PRIOR if name == "Yem" else around_nominal(v), UNITS[name])
            for name, v in NOMINAL.items()
        ),
        Quantity("X_0", Uniform(0.1, 0.3), "g/L"),
        Quantity("S_0", Uniform(3.0, 7.0), "g/L"),
        Quantity("A_0", Uniform(0.0, 0.2), "g/L"),
        Quantity("DOT_0", Uniform(90.0, 100.0), "%"),
    ),
    constants={"Cs": 0.391, "Cx": 0.488, "H": 14000.0, "DOTstar": 99.0, "Kla": 220.0, "tau": 35.0},
    noise_sigma={"X": 0.1, "S": 0.2, "A": 0.05, "DOTm": 3.0},
    T=6.0,
    n_obs=30,
    rates=rates,
    initial=initial,
    solver="rodas4",
)
