"""Michaelis-Menten kinetics (SPEC 2.1): substrate S converted to product P."""

from .base import Model, Quantity, pos
from .priors import LogUniform, Uniform


def rates(s, p, c):
    S = pos(s.S)
    v = p.Vmax * S / (p.Km + S)
    return {"S": -v, "P": v}


MODEL = Model(
    name="mmk",
    description="Michaelis-Menten kinetics: substrate S converted to product P",
    states=("S", "P"),
    state_units=("mM", "mM"),
    channels=("S", "P"),
    quantities=(
        Quantity("Vmax", LogUniform(0.1, 10.0), "mM/h"),
        Quantity("Km", LogUniform(0.1, 10.0), "mM"),
        Quantity("S_0", Uniform(1.0, 10.0), "mM"),
        Quantity("P_0", Uniform(0.0, 2.0), "mM"),
    ),
    constants={},
    noise_sigma={"S": 0.5, "P": 0.5},
    T=2.0,
    n_obs=14,
    rates=rates,
    solver="rodas4",
)
