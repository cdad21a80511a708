"""demucs_rr.audio."""
