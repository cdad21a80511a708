"""Loading official Demucs 3/4 model packages (``{sig}.th`` files): a v3/v4-only view of the
one official loader, :func:`demucs_rr.models.legacy.model_from_official_package`.

The packages are pickles of ``{'klass', 'args', 'kwargs', 'state', 'training_args', 'metrics'}``
whose ``klass`` references ``demucs.demucs.Demucs``, ``demucs.hdemucs.HDemucs`` or
``demucs.htdemucs.HTDemucs``; they are read through the restricted unpickler (nothing outside
its allow-list is resolved, nothing is executed) and built with their stored kwargs.
"""

from __future__ import annotations

from pathlib import Path

from demucs_rr.errors import PackageFormatError
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.legacy import build_official_model, load_official_package

__all__ = ["OFFICIAL_V4_CLASSES", "model_from_official_v4_package"]

OFFICIAL_V4_CLASSES = ("demucs.demucs.Demucs", "demucs.hdemucs.HDemucs", "demucs.htdemucs.HTDemucs")
"""Official class paths of the Demucs 3/4 models."""


def model_from_official_v4_package(path: str | Path) -> PackagedModel:
    """Build the model of an official Demucs 3/4 package with its float32 weights.

    Args:
        path: the package file (e.g. ``955717e8-8726e21a.th``).

    Returns:
        the model (``DemucsV3``, ``HDemucs`` or ``HTDemucs``) in eval mode.

    Raises:
        ModelNotFoundError: the file does not exist.
        PackageFormatError: the pickle references anything outside the allow-list, the class is
            not a Demucs 3/4 model, the state is quantized, or kwargs / weights do not fit.
    """
    package = load_official_package(path)
    if package.klass_name not in OFFICIAL_V4_CLASSES:
        raise PackageFormatError(
            f"{path}: model class {package.klass_name} is not a Demucs 3/4 model "
            f"({', '.join(OFFICIAL_V4_CLASSES)})"
        )
    return build_official_model(package, str(path))
