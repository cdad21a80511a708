"""demucs_rr.data."""
