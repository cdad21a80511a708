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


FIVE = ["drums", "bass", "other", "vocals", "piano"]
"""The stems of the 5-stem synthetic set (``piano`` is the new instrument)."""


def finetune_overrides(init: Path | str, root: Path, *extra: str) -> list[str]:
    """Overrides for a quick fine-tuning run from ``init`` on the synthetic data at ``root``:
    the tiny preset's recipe, spelled out (a fine-tuning run takes no model preset)."""
    return [
        f"init={init}",
        "dset=synthetic",
        f"dset.root={root}",
        "segment=1.0",
        "batch_size=8",
        "optim.lr=3e-3",
        "data.workers=0",
        "data.repitch=0",
        "augment.shift=0.25",
        "valid.max_seconds=2",
        "log.progress=false",
        *extra,
    ]
