"""Model registry. A new model is one module defining ``MODEL`` plus one line here; a
user's model needs none: :func:`load_model` reads a Python, SBML or PEtab file (SPEC 11)."""

from __future__ import annotations

from importlib import import_module

from .base import Model
from .odesystem import ModelSourceError
from .sources import ModelSource, load_model

_MODULES = {
    "mmk": "mechinfer.models.mmk",
    "ecoli": "mechinfer.models.ecoli",
}


def list_models() -> list[str]:
    return list(_MODULES)


def get_model(name: str) -> Model:
    """A registered model by name (:func:`load_model` also takes model files)."""
    if name not in _MODULES:
        raise ModelSourceError(f"unknown model {name!r}; available models: {', '.join(_MODULES)}")
    return import_module(_MODULES[name]).MODEL


__all__ = ["Model", "ModelSource", "ModelSourceError", "get_model", "list_models", "load_model"]
