"""Loading official Demucs 3/4 model packages (``{sig}.th`` files) into demucs_rr models.

The packages are pickles of ``{'klass', 'args', 'kwargs', 'state', 'training_args', 'metrics'}``
whose ``klass`` references ``demucs.demucs.Demucs``, ``demucs.hdemucs.HDemucs`` or
``demucs.htdemucs.HTDemucs`` and whose HTDemucs ``kwargs['segment']`` is a
``fractions.Fraction``; the state is float16. They are read through the restricted unpickler of
:mod:`demucs_rr.models.legacy` (nothing outside its allow-list is resolved, nothing is executed),
the model is rebuilt from the stored kwargs and the state is strictly loaded as float32.

DiffQ-quantized packages (``mdx_q``, ``mdx_extra_q``) are refused.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from demucs_rr.errors import PackageFormatError
from demucs_rr.models.base import PackagedModel
from demucs_rr.models.demucs_v3 import DemucsV3
from demucs_rr.models.hdemucs import HDemucs
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.models.legacy import load_official_package
from demucs_rr.models.package import load_state_strict

__all__ = ["OFFICIAL_V4_CLASSES", "model_from_official_v4_package"]

logger = logging.getLogger(__name__)

#: Official class path -> demucs_rr class.
OFFICIAL_V4_CLASSES: dict[str, type[DemucsV3] | type[HDemucs] | type[HTDemucs]] = {
    "demucs.demucs.Demucs": DemucsV3,
    "demucs.hdemucs.HDemucs": HDemucs,
    "demucs.htdemucs.HTDemucs": HTDemucs,
}


def _known_kwargs(klass: type[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop (with a warning) keyword arguments the constructor does not take, as the official
    loader does."""
    params = inspect.signature(klass).parameters
    kept = {}
    for key, value in kwargs.items():
        if key in params:
            kept[key] = value
        else:
            logger.warning("dropping unknown constructor argument %r of %s", key, klass.__name__)
    return kept


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
    klass = OFFICIAL_V4_CLASSES.get(package.klass_name)
    if klass is None:
        known = ", ".join(OFFICIAL_V4_CLASSES)
        raise PackageFormatError(
            f"{path}: model class {package.klass_name} is not a Demucs 3/4 model ({known})"
        )
    kwargs = _known_kwargs(klass, package.kwargs)
    try:
        model = klass(*package.args, **kwargs)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise PackageFormatError(f"cannot build {package.klass_name} from {path}: {exc}") from None
    state = package.state
    if isinstance(model, DemucsV3):
        state = model.upgrade_state(state)
    load_state_strict(model, state, str(path))
    return model.eval()
