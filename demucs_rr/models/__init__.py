"""demucs_rr.models: model classes, the class registry, release packages and pretrained names.

Names are imported on first use (:mod:`demucs_rr.lazy`); model classes themselves
(``demucs_rr.models.demucs``, ``demucs_rr.models.tasnet``, ...) are imported through the registry,
so importing this package neither builds them nor imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from demucs_rr.lazy import lazy_exports

if TYPE_CHECKING:
    from demucs_rr.models.base import PackagedModel, SeparationModel
    from demucs_rr.models.fetch import download
    from demucs_rr.models.package import (
        FORMAT_VERSION,
        TrainingInfo,
        load_package,
        read_package_metadata,
        save_package,
    )
    from demucs_rr.models.pretrained import (
        DEFAULT_MODEL,
        PRETRAINED,
        PretrainedInfo,
        list_models,
        resolve_model,
    )
    from demucs_rr.models.registry import MODEL_CLASSES, build_model, register_model_class

__all__ = [
    "DEFAULT_MODEL",
    "FORMAT_VERSION",
    "MODEL_CLASSES",
    "PRETRAINED",
    "PackagedModel",
    "PretrainedInfo",
    "SeparationModel",
    "TrainingInfo",
    "build_model",
    "download",
    "list_models",
    "load_package",
    "read_package_metadata",
    "register_model_class",
    "resolve_model",
    "save_package",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "PackagedModel": "base",
        "SeparationModel": "base",
        "download": "fetch",
        "FORMAT_VERSION": "package",
        "TrainingInfo": "package",
        "load_package": "package",
        "read_package_metadata": "package",
        "save_package": "package",
        "DEFAULT_MODEL": "pretrained",
        "PRETRAINED": "pretrained",
        "PretrainedInfo": "pretrained",
        "list_models": "pretrained",
        "resolve_model": "pretrained",
        "MODEL_CLASSES": "registry",
        "build_model": "registry",
        "register_model_class": "registry",
    },
)
