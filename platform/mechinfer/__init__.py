"""mechinfer: fast inference of mechanistic bioprocess model parameters on Ray.

The public API (SPEC section 8)::

    m = mechinfer.get_model("ecoli")      # mechinfer.list_models()
    theta = m.sample_prior(n, seed=0)
    z = m.to_z(theta); theta = m.from_z(z)
    y = m.simulate(theta, t)              # (B, N, C), NaN rows where the solver failed
    est = mechinfer.load_estimator("ecoli")
    theta_hat = est.estimate(t, channel, value)
    res = est.infer(t, channel, value, refine=False, level=0.95)   # intervals, gof_pvalue (SPEC 9)
    obs = mechinfer.observations_from_frame(df, "ecoli")            # a long table -> the arrays above
"""

from .models import get_model, list_models

SPEC_VERSION = 1
__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "__version__",
    "get_model",
    "list_models",
    "load_estimator",
    "observations_from_frame",
]


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
