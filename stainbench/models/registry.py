"""The model registry: every architecture is chosen by name from a recipe.

``@register_model("name")`` on a factory function (or class) adds it; :func:`create_model`
builds one from its name and keyword arguments; :func:`list_models` lists what is there.
Tests are parametrized over :func:`list_models`, so a newly registered model is tested for
free: each registration therefore also names a *small* configuration (a few thousand
parameters) used by tests and examples.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from stainbench.errors import ModelError

F = TypeVar("F", bound=Callable[..., torch.nn.Module])

Role = Literal["generator", "discriminator"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    ``role``: ``"generator"`` maps ``(B, C_in, H, W)`` to ``(B, C_out, H, W)`` and has an int
    attribute ``size_multiple``; ``"discriminator"`` maps ``(B, C_in, H, W)`` to a patch map
    ``(B, 1, h, w)`` of real/fake logits. ``small_kwargs``: a tiny configuration for tests.
    """

    name: str
    factory: Callable[..., torch.nn.Module]
    role: Role
    small_kwargs: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, role: Role, small_kwargs: dict[str, Any] | None = None
) -> Callable[[F], F]:
    """Decorator: register ``factory`` under ``name`` (names are unique)."""

    def deco(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model {name!r} is already registered")
        doc = inspect.getdoc(factory) or ""
        _REGISTRY[name] = ModelEntry(name, factory, role, dict(small_kwargs or {}), doc)
        return factory

    return deco


def _ensure_loaded() -> None:
    # Importing the architecture modules registers them; done lazily so that importing the
    # registry alone never forms an import cycle.
    from stainbench.models import discriminators, resnet_generator, unet  # noqa: F401


def list_models(role: Role | None = None) -> list[str]:
    """Sorted names of the registered models (optionally only generators/discriminators)."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if role is None or e.role == role)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; :class:`ModelError` listing valid names if unknown."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise ModelError(f"unknown model {name!r} (valid models: {valid})") from None


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build the model registered as ``name`` with ``kwargs``.

    Unknown names and invalid keyword arguments raise a one-line :class:`ModelError`.
    """
    entry = get_entry(name)
    try:
        inspect.signature(entry.factory).bind(**kwargs)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: {exc}") from None
    try:
        return entry.factory(**kwargs)
    except ValueError as exc:
        raise ModelError(f"model {name!r}: {exc}") from None
