"""The stem names of MUSDB18, in the order every released v2 model outputs them.

One constant shared by the models, the data layer, training, evaluation and the leaderboard;
the order is that of the MUSDB18 ``.stem.mp4`` streams 1 to 4 (stream 0 is the mixture).
"""

from __future__ import annotations

__all__ = ["MUSDB_SOURCES"]

#: MUSDB18 sources in model order: drums, bass, other, vocals.
MUSDB_SOURCES: tuple[str, ...] = ("drums", "bass", "other", "vocals")
