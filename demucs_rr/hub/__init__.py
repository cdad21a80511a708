"""demucs_rr.hub: model files and where they come from.

Every format (our ``.safetensors`` packages and bag packages, official ``.th`` packages through
the restricted unpickler, official 4.1.0 hub ``.safetensors``, bag YAMLs, v2 hub states), the
released names with their URLs and checksums, the download cache, ``models list`` and
``models convert``. The networks themselves live in :mod:`demucs_rr.models`, which never
imports this package.

The one public loader is :func:`load_model`; :func:`save_package` writes our format.
Names are imported on first use, so importing this package neither loads torch nor a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from demucs_rr.lazy import lazy_exports

if TYPE_CHECKING:
    from demucs_rr.hub.catalogue import DEFAULT_MODEL
    from demucs_rr.hub.convert import convert_model
    from demucs_rr.hub.loaded import LoadedModel
    from demucs_rr.hub.loader import list_models, load_model
    from demucs_rr.hub.package import read_package_metadata, save_package
    from demucs_rr.hub.training_info import TrainingInfo

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "TrainingInfo",
    "convert_model",
    "list_models",
    "load_model",
    "read_package_metadata",
    "save_package",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DEFAULT_MODEL": "catalogue",
        "convert_model": "convert",
        "LoadedModel": "loaded",
        "list_models": "loader",
        "load_model": "loader",
        "read_package_metadata": "package",
        "save_package": "package",
        "TrainingInfo": "training_info",
    },
)
