"""Quick training runs: overrides of a tiny model on the small synthetic set."""

from __future__ import annotations

from pathlib import Path

RATE = 16000
"""Sample rate of the small synthetic set (``small_synth`` fixture)."""


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides for a quick tiny run on the synthetic data at ``root``."""
    return [
        "model=tiny",
        "dset=synthetic",
        f"dset.root={root}",
        f"dset.samplerate={RATE}",
        "log.progress=false",
        *extra,
    ]
