"""demucs_rr: music source separation with Demucs and Conv-TasNet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from demucs_rr.process import configure_process

__all__ = ["Separator", "__version__", "configure_process"]

if TYPE_CHECKING:
    from demucs_rr.separate.api import Separator


def __getattr__(name: str) -> Any:
    """Import :class:`Separator` (and torch) on first use, so ``--help`` stays fast."""
    if name == "Separator":
        from demucs_rr.separate.api import Separator

        return Separator
    raise AttributeError(f"module 'demucs_rr' has no attribute {name!r}")
