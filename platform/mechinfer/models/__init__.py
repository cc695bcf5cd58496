"""Model registry. A new model is one module defining ``MODEL`` plus one line here."""

from __future__ import annotations

from importlib import import_module

from .base import Model

_MODULES = {
    "mmk": "mechinfer.models.mmk",
    "ecoli": "mechinfer.models.ecoli",
}


def list_models() -> list[str]:
    return list(_MODULES)


def get_model(name: str) -> Model:
    if name not in _MODULES:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(_MODULES)}")
    return import_module(_MODULES[name]).MODEL
