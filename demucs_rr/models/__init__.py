"""demucs_rr.models."""
