"""Model class registry: the class *name* stored in a package maps to a class here.

Packages never pickle classes; they store a registry name plus JSON kwargs and the loader
rebuilds the model with :func:`build_model`. Built-in classes are imported lazily, on first
lookup, so importing this module (and ``demucs_rr.models``) stays cheap and free of cycles.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from demucs_rr.errors import PackageFormatError
from demucs_rr.models.base import PackagedModel

ModelFactory = Callable[..., PackagedModel]
"""What the registry maps a name to: a model class (called with its ``init_kwargs``)."""

# Built-in classes: registry name -> "module:attribute", imported on first lookup.
_BUILTIN: dict[str, str] = {
    "Demucs": "demucs_rr.models.demucs_v2:Demucs",
    "ConvTasNet": "demucs_rr.models.tasnet:ConvTasNet",
    "DemucsV3": "demucs_rr.models.demucs_v3:DemucsV3",
    "HDemucs": "demucs_rr.models.hdemucs:HDemucs",
    "HTDemucs": "demucs_rr.models.htdemucs:HTDemucs",
    "BSRoformer": "demucs_rr.models.bs_roformer:BSRoformer",
    "MelBandRoformer": "demucs_rr.models.mel_band_roformer:MelBandRoformer",
    "FractionModel": "demucs_rr.models.testing:FractionModel",
    "SCNet": "demucs_rr.models.scnet:SCNet",
    "MDX23C": "demucs_rr.models.mdx23c:MDX23C",
}


class ModelClassRegistry(MutableMapping[str, ModelFactory]):
    """A ``name -> class`` mapping whose built-in entries are imported when first read.

    Iterating, ``len`` and ``in`` never import anything; ``map[name]`` imports the module of a
    built-in entry and caches the class (an ImportError propagates if the module is missing).
    """

    def __init__(self, lazy: dict[str, str]) -> None:
        self._lazy = dict(lazy)
        self._resolved: dict[str, ModelFactory] = {}

    def __getitem__(self, name: str) -> ModelFactory:
        if name in self._resolved:
            return self._resolved[name]
        target = self._lazy[name]  # KeyError for an unknown name, as for a dict
        module_name, _, attr = target.partition(":")
        cls: ModelFactory = getattr(importlib.import_module(module_name), attr)
        self._resolved[name] = cls
        del self._lazy[name]
        return cls

    def __setitem__(self, name: str, cls: ModelFactory) -> None:
        self._lazy.pop(name, None)
        self._resolved[name] = cls

    def __delitem__(self, name: str) -> None:
        if name in self._resolved:
            del self._resolved[name]
        else:
            del self._lazy[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._resolved
        yield from (name for name in self._lazy if name not in self._resolved)

    def __len__(self) -> int:
        return len(self._resolved) + len(self._lazy)

    def __contains__(self, name: object) -> bool:
        return name in self._resolved or name in self._lazy

    def loaded(self) -> dict[str, ModelFactory]:
        """The entries already imported (no import happens)."""
        return dict(self._resolved)

    def __repr__(self) -> str:
        return f"ModelClassRegistry({sorted(self)})"


MODEL_CLASSES: ModelClassRegistry = ModelClassRegistry(_BUILTIN)
"""Registry name -> model class. Built-ins (``Demucs``, ``ConvTasNet``) resolve lazily."""


def register_model_class(name: str, cls: ModelFactory) -> None:
    """Register ``cls`` under ``name`` (replacing any previous entry of that name).

    The class must take JSON-able keyword arguments and its instances must fulfil
    :class:`~demucs_rr.models.base.PackagedModel` (``init_kwargs`` included) so that
    :func:`demucs_rr.hub.package.save_package` can store them.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"model class name must be a non-empty string, got {name!r}")
    MODEL_CLASSES[name] = cls


def get_model_class(class_name: str) -> ModelFactory:
    """Return the class registered as ``class_name``.

    Raises:
        PackageFormatError: the name is unknown.
    """
    if class_name not in MODEL_CLASSES:
        known = ", ".join(sorted(MODEL_CLASSES)) or "none"
        raise PackageFormatError(
            f"unknown model class {class_name!r}; known classes: {known}. "
            "The package may come from a newer or patched demucs_rr."
        )
    return MODEL_CLASSES[class_name]


def class_name_of(model: PackagedModel) -> str:
    """Registry name under which ``type(model)`` is registered.

    Only the entry named like the class (and already-resolved entries) are looked at, so no
    unrelated built-in module gets imported.

    Raises:
        PackageFormatError: the model's class is not registered.
    """
    cls = type(model)
    if cls.__name__ in MODEL_CLASSES and MODEL_CLASSES[cls.__name__] is cls:
        return cls.__name__
    for name, registered in MODEL_CLASSES.loaded().items():
        if registered is cls:
            return name
    raise PackageFormatError(
        f"model class {cls.__module__}.{cls.__qualname__} is not registered; "
        "call demucs_rr.models.registry.register_model_class(name, cls) first"
    )


def build_model(class_name: str, kwargs: dict[str, Any]) -> PackagedModel:
    """Instantiate the registered class ``class_name`` with ``kwargs``.

    Raises:
        PackageFormatError: unknown class, or ``kwargs`` do not fit its constructor.
    """
    cls = get_model_class(class_name)
    if not isinstance(kwargs, dict):
        raise PackageFormatError(f"kwargs for {class_name} must be a dict, got {type(kwargs)}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise PackageFormatError(
            f"stored kwargs do not fit {class_name}({', '.join(sorted(kwargs))}): {exc}"
        ) from exc
    except ValueError:  # no introspectable signature; let the call itself complain
        pass
    return cls(**kwargs)
