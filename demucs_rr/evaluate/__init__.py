"""demucs_rr.evaluate."""
