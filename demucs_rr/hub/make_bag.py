"""``demucs-rr models bag``: several models written as one bag package.

The per-source recipe of ``htdemucs_ft``: four models fine-tuned one per stem, each weighing
only its own stem in the bag (``--weights identity``). Members are anything ``-n`` accepts
that holds one network; they must agree on stems, sample rate and channels. A member that is a
package trained here keeps its training block (and lineage) inside the bag.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from demucs_rr.errors import ConfigError, PackageFormatError

if TYPE_CHECKING:  # the parser imports this module: torch is imported when a bag is made
    from demucs_rr.hub.convert import Converted
    from demucs_rr.hub.training_info import TrainingInfo
    from demucs_rr.models.base import PackagedModel

__all__ = ["add_bag_arguments", "make_bag", "parse_weights", "run_models_bag"]


def parse_weights(
    items: Sequence[str] | None, members: int, sources: Sequence[str]
) -> list[list[float]] | None:
    """``--weights``: one comma-separated list of S numbers per member, or ``identity``
    (member ``i`` gives stem ``i`` only; needs as many members as stems).

    Raises:
        ConfigError: not a number, the wrong count, or ``identity`` with the wrong count.
    """
    if not items:
        return None
    if list(items) == ["identity"]:
        if members != len(sources):
            raise ConfigError(
                f"--weights identity needs one member per stem ({len(sources)}: "
                f"{', '.join(sources)}), got {members} members"
            )
        return [[1.0 if i == j else 0.0 for j in range(members)] for i in range(members)]
    if len(items) != members:
        raise ConfigError(f"--weights needs one list per member ({members}), got {len(items)}")
    rows = []
    for item in items:
        try:
            row = [float(value) for value in item.split(",")]
        except ValueError:
            raise ConfigError(
                f"--weights {item!r} is not a comma-separated list of numbers"
            ) from None
        if len(row) != len(sources) or min(row) < 0:
            raise ConfigError(
                f"--weights {item!r}: need {len(sources)} non-negative values, one per stem "
                f"({', '.join(sources)})"
            )
        rows.append(row)
    return rows


def _member(source: str, repo: Path | None) -> tuple[PackagedModel, TrainingInfo | None]:
    """The one network of ``source`` and, for a package trained here, its training block."""
    from demucs_rr.hub.loader import resolve
    from demucs_rr.hub.package import package_kind, read_package_metadata, read_training_info

    loaded = resolve(source, repo)
    if len(loaded.members) != 1:
        raise ConfigError(
            f"{source} is a bag of {len(loaded.members)} models: a member of a bag must be one "
            "model"
        )
    training = None
    path = Path(source).expanduser()
    if path.suffix == ".safetensors" and path.is_file():
        try:
            meta = read_package_metadata(path)
        except PackageFormatError:  # an official hub file: no training block
            meta = {}
        if meta and package_kind(meta) != "bag":
            training = read_training_info(meta, str(path))
    return loaded.members[0], training


def _signature(source: str) -> str:
    """A plain file-name-like name for a member: the file stem or the released name."""
    stem = Path(source).stem if Path(source).suffix else source
    return re.sub(r"[^\w.-]", "_", stem) or "member"


def make_bag(
    sources: Sequence[str],
    dst: str | Path,
    *,
    weights: Sequence[str] | None = None,
    segment: float | None = None,
    name: str | None = None,
    repo: Path | None = None,
) -> Converted:
    """Write the models ``sources`` as one bag package at ``dst``.

    Raises:
        ConfigError: ``dst`` is not a ``.safetensors`` path, a member is a bag, bad weights.
        ModelNotFoundError, DownloadError, PackageFormatError: a member does not load, or
            the members disagree on stems, rate or channels.
    """
    from demucs_rr.hub.bag_package import save_bag_package
    from demucs_rr.hub.convert import Converted, half_is_exact
    from demucs_rr.hub.loaded import LoadedModel

    dst = Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        raise ConfigError(f"the bag package must be a .safetensors file, got {dst}")
    if segment is not None and segment <= 0:
        raise ConfigError(f"--segment must be > 0 seconds, got {segment}")
    members, trainings = zip(*(_member(s, repo) for s in sources), strict=True)
    rows = parse_weights(weights, len(members), members[0].sources)
    bag = LoadedModel(
        name or dst.stem, list(members), [_signature(s) for s in sources], rows, segment
    )
    bag.check()
    bag.build()  # the weights of every stem must have a positive sum
    half = half_is_exact(bag.members)
    save_bag_package(bag, dst, half=half, training=list(trainings))
    return Converted(dst, len(members), half)


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demucs-rr models bag``."""
    parser.add_argument("dst", help="destination .safetensors bag package")
    parser.add_argument(
        "members", nargs="+", metavar="MODEL", help="member models: anything -n accepts"
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        metavar="W",
        help="per member, comma-separated weights of each stem (1,0,0,0 ...), or `identity`: "
        "member i gives stem i only (htdemucs_ft); default: every member weighs 1",
    )
    parser.add_argument(
        "--segment", type=float, help="chunk length in seconds for every member (default: theirs)"
    )
    parser.add_argument("--name", help="model name stored in the package (default: DST's name)")
    parser.add_argument("--repo", help="folder searched first for the members")


def run_models_bag(args: argparse.Namespace) -> int:
    """Write the bag and say what was written."""
    done = make_bag(
        args.members,
        args.dst,
        weights=args.weights,
        segment=args.segment,
        name=args.name,
        repo=Path(args.repo) if args.repo else None,
    )
    precision = "float16 (exact)" if done.half else "float32"
    print(
        f"wrote {done.path} (bag of {done.members} models, {precision} weights); use it with "
        f"-n {done.path}"
    )
    return 0
