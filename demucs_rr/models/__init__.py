"""demucs_rr.models: model classes, the class registry, release packages and pretrained names.

Model classes themselves (``demucs_rr.models.demucs``, ``demucs_rr.models.tasnet``) are imported
lazily through the registry, so importing this package does not build or import them.
"""

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
