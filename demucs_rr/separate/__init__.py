"""demucs_rr.separate."""
