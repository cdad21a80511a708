"""demucs_rr: music source separation with Demucs and Conv-TasNet."""

from demucs_rr.separate.api import Separator

__version__ = "0.1.0"

__all__ = ["Separator", "__version__"]
