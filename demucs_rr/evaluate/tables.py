"""Plain tables for the evaluation outputs: Markdown, CSV and number formatting."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence

from demucs_rr.sources import MUSDB_SOURCES

__all__ = ["EMPTY", "fmt", "markdown", "mean", "order_targets", "to_csv"]

#: Cell of a missing value in Markdown (empty in CSV).
EMPTY = "—"


def order_targets(targets: Iterable[str]) -> list[str]:
    """MUSDB18 stems first in their usual order, then the others sorted."""
    found = set(targets)
    known = [t for t in MUSDB_SOURCES if t in found]
    return known + sorted(found - set(known))


def mean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values (NaN when there is none)."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def fmt(x: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or :data:`EMPTY`."""
    return EMPTY if x is None or math.isnan(x) else f"{x:.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as CSV (empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if c == EMPTY else c for c in r] for r in rows])
    return buf.getvalue()
