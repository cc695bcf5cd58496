"""mechinfer: fast inference of mechanistic bioprocess model parameters on Ray.

The public API (SPEC section 8)::

    m = mechinfer.get_model("ecoli")      # mechinfer.list_models()
    m = mechinfer.load_model("path/to/model.py")   # or a name, an SBML file, a PEtab YAML (SPEC 11)
    y = mechinfer.simulate_sbml("model.xml", t, ["S1", "S2"])      # an SBML file at its own values
    problem = mechinfer.load_petab("problem.yaml")                  # .model, .log_likelihood(theta)
    theta = m.sample_prior(n, seed=0)
    z = m.to_z(theta); theta = m.from_z(z)
    y = m.simulate(theta, t)              # (B, N, C), NaN rows where the solver failed
    est = mechinfer.load_estimator("ecoli")
    theta_hat = est.estimate(t, channel, value)
    res = est.infer(t, channel, value, refine=False, level=0.95)   # intervals, gof_pvalue (SPEC 9)
    obs = mechinfer.observations_from_frame(df, "ecoli")            # a long table -> the arrays above
"""

from .models import Model, ModelSource, get_model, list_models, load_model
from .models.base import Quantity
from .models.odesystem import ModelSourceError, UnsupportedModelError

SPEC_VERSION = 1
__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "Model",
    "ModelSource",
    "ModelSourceError",
    "Quantity",
    "UnsupportedModelError",
    "__version__",
    "get_model",
    "list_models",
    "load_estimator",
    "load_model",
    "load_petab",
    "observations_from_frame",
    "simulate_sbml",
]


def simulate_sbml(path, t, variables, amounts=(), **options):
    """The model of an SBML file at its own parameter values at times t: (len(t),
    len(variables)) float64, species as concentrations (as amounts when named in
    ``amounts``), parameters and compartments as their values (SPEC 11); raises
    UnsupportedModelError naming what it does not simulate exactly."""
    from .models.sbml_model import simulate_sbml as _simulate

    return _simulate(path, t, variables, amounts, **options)


def load_petab(path):
    """A PEtab v1 problem (SPEC 11): ``.model``, ``.design``, ``.measurements``,
    ``.nominal`` and ``.log_likelihood(theta=None)``."""
    from .models.petab import load_petab as _load

    return _load(path)


def load_estimator(source: str):
    """The inference network of a checkpoint directory or URI, or of the pretrained
    checkpoint shipped for a model name (``load_estimator("ecoli")``)."""
    from .estimate.estimator import load_estimator as _load

    return _load(source)


def observations_from_frame(frame, model, *, sort: bool = False):
    """A long table (pandas DataFrame or pyarrow Table: experiment, t, channel name,
    value) -> experiment ids, NaN-padded (t, channel index, value) arrays for
    ``est.infer`` and a per-experiment ``error`` (see
    :func:`mechinfer.estimate.frame.observations_from_frame`)."""
    from .estimate.frame import observations_from_frame as _from_frame

    return _from_frame(frame, model, sort=sort)
