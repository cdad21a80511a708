"""demucs_rr.train."""
