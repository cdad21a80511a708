"""demucs_rr.models: the networks, their layers, the model contract, the class registry, the bag.

Model files (formats, released names, downloads) are :mod:`demucs_rr.hub`'s business; this
package never imports it. Names are imported on first use (:mod:`demucs_rr.lazy`); model classes
themselves (``demucs_rr.models.demucs_v2``, ``demucs_rr.models.tasnet``, ...) are imported
through the registry, so importing this package neither builds them nor imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from demucs_rr.lazy import lazy_exports

if TYPE_CHECKING:
    from demucs_rr.models.bag import BagOfModels
    from demucs_rr.models.base import PackagedModel, SeparationModel
    from demucs_rr.models.registry import MODEL_CLASSES, build_model, register_model_class

__all__ = [
    "MODEL_CLASSES",
    "BagOfModels",
    "PackagedModel",
    "SeparationModel",
    "build_model",
    "register_model_class",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BagOfModels": "bag",
        "PackagedModel": "base",
        "SeparationModel": "base",
        "MODEL_CLASSES": "registry",
        "build_model": "registry",
        "register_model_class": "registry",
    },
)
