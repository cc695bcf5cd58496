"""mechinfer: fast inference of mechanistic bioprocess model parameters on Ray.

The public API (SPEC section 8)::

    m = mechinfer.get_model("ecoli")      # mechinfer.list_models()
    theta = m.sample_prior(n, seed=0)
    z = m.to_z(theta); theta = m.from_z(z)
    y = m.simulate(theta, t)              # (B, N, C), NaN rows where the solver failed
    est = mechinfer.load_estimator("ecoli")
    theta_hat = est.estimate(t, channel, value)
"""

from .models import get_model, list_models

SPEC_VERSION = 1
__version__ = "0.1.0"

__all__ = ["SPEC_VERSION", "__version__", "get_model", "list_models", "load_estimator"]


def load_estimator(source: str):
    """The inference network of a checkpoint directory or URI, or of the pretrained
    checkpoint shipped for a model name (``load_estimator("ecoli")``)."""
    from .estimate.estimator import load_estimator as _load

    return _load(source)
