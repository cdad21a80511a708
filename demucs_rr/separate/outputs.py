"""Inputs and outputs of a separation batch: track discovery, output names, stem selection,
and writing a track's stems all-or-nothing."""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from demucs_rr.audio import AUDIO_EXTENSIONS, WriteOptions
from demucs_rr.audio.write import encode_file
from demucs_rr.errors import ConfigError
from demucs_rr.staging import OutputGroup

TEMPLATE_FIELDS = frozenset({"track", "trackext", "stem", "ext", "model"})


@dataclass(frozen=True)
class InputFile:
    """One input file of a batch.

    Attributes:
        path: the audio file.
        name: output name: the file name without extension, prefixed by its folder relative to
            the input directory when found by a directory walk (``album/01``).
        ext: the file extension without the dot (``mp3``).
    """

    path: Path
    name: str
    ext: str


def _walk(directory: Path, recursive: bool) -> list[Path]:
    """Audio files in ``directory`` (sorted), by extension; hidden files are skipped."""
    found = directory.rglob("*") if recursive else directory.glob("*")
    return sorted(
        p
        for p in found
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")
    )


def collect_tracks(inputs: list[str], recursive: bool) -> tuple[list[InputFile], list[str]]:
    """Expand files and directories into tracks.

    Returns:
        (tracks in input order, one error line per input that yields nothing).
    """
    tracks: list[InputFile] = []
    errors: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = _walk(path, recursive)
            if not files:
                hint = "" if recursive else " (use --recursive to search subfolders)"
                errors.append(f"{item}: no audio files found in this directory{hint}")
            for f in files:
                rel = f.relative_to(path).with_suffix("").as_posix()
                tracks.append(InputFile(f, rel, f.suffix.lstrip(".")))
        elif path.exists():
            tracks.append(InputFile(path, path.stem, path.suffix.lstrip(".")))
        else:
            errors.append(f"{item}: no such file or directory")
    return _unique(tracks), errors


def _unique(tracks: list[InputFile]) -> list[InputFile]:
    """Tracks in order, each file once (a file named twice, or by two routes, is done once)."""
    seen: set[Path] = set()
    out: list[InputFile] = []
    for track in tracks:
        key = track.path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(track)
    return out


def check_template(template: str) -> None:
    """Reject a ``--filename`` template with unknown fields, bad syntax or no ``{stem}``."""
    if "\0" in template:
        raise ConfigError("bad --filename template: it contains a NUL byte")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"bad --filename template {template!r}: {exc}") from None
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ConfigError(
            f"bad --filename template {template!r}: unknown field(s) "
            f"{', '.join(sorted(unknown))}; use {', '.join(sorted(TEMPLATE_FIELDS))}"
        )
    if "stem" not in fields:
        raise ConfigError(f"bad --filename template {template!r}: it must contain {{stem}}")
    if Path(template).is_absolute() or template.startswith("~"):
        raise ConfigError(f"bad --filename template {template!r}: it must be a relative path")


def output_path(
    out_dir: Path, template: str, track: InputFile, stem: str, ext: str, model: str
) -> Path:
    """Render the template for one stem; the result always lies inside ``out_dir``.

    Raises:
        ConfigError: the path leaves ``out_dir`` (``..``, a symlink), contains a NUL byte, or
            has a component longer than the file system's limit (``NAME_MAX``, 255 bytes), in
            one line naming the input file.
    """
    rel = template.format(track=track.name, trackext=track.ext, stem=stem, ext=ext, model=model)
    if "\0" in rel:
        raise ConfigError(f"{track.path}: the output name {rel!r} contains a NUL byte")
    root = out_dir.resolve()
    limit = name_max(root)
    for part in Path(rel).parts:
        size = len(os.fsencode(part))
        if size > limit:
            raise ConfigError(
                f"{track.path}: output name {part[:20]}... is {size} bytes, longer than the "
                f"{limit}-byte limit of a file name here (NAME_MAX); use a shorter --filename "
                "or rename the input"
            )
    path = (root / rel).resolve()
    if path == root or not path.is_relative_to(root):
        raise ConfigError(f"--filename {template!r} gives {rel!r}, which is outside {out_dir}")
    return path


def name_max(folder: Path) -> int:
    """Longest file name, in bytes, of the file system holding ``folder`` (or its nearest
    existing parent); 255 where the system does not say."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                limit = int(os.pathconf(candidate, "PC_NAME_MAX"))
            except (OSError, ValueError, AttributeError):  # no pathconf (Windows), no answer
                break
            return limit if limit > 0 else 255  # -1: no limit known
    return 255


def select_stems(
    sources: list[str], stems: list[str] | None, two_stems: str | None, other_method: str
) -> list[str]:
    """Names of the stems to write; validates ``--stems`` and ``--two-stems``.

    By default every source, and for a single-target model (one source X, as MSST's vocal
    models) X and ``no_X``, the mixture minus X (MSST's ``instrumental``).
    """
    for name in (stems or []) + ([two_stems] if two_stems else []):
        if name not in sources:
            raise ConfigError(f"unknown stem {name!r}: this model has {', '.join(sources)}")
    if two_stems:
        return [two_stems] + ([] if other_method == "none" else [f"no_{two_stems}"])
    if stems:
        return list(stems)
    return list(sources) + ([f"no_{sources[0]}"] if len(sources) == 1 else [])


def compose_stems(
    stems: dict[str, torch.Tensor], mix: torch.Tensor, names: list[str], other_method: str
) -> dict[str, torch.Tensor]:
    """Build the requested outputs; ``no_X`` is the sum of the other stems (``add``) or the
    mixture minus ``X`` (``minus``, and always for a single-target model, which has no other
    stems). Tensors are (C, T)."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name in stems:
            out[name] = stems[name]
        elif name.startswith("no_") and (other_method == "minus" or len(stems) == 1):
            out[name] = mix - stems[name[3:]]
        else:
            others = [v for k, v in stems.items() if k != name[3:]]
            out[name] = torch.stack(others).sum(0)
    return out


def write_track(outputs: dict[Path, torch.Tensor], samplerate: int, options: WriteOptions) -> None:
    """Write every (C, T) stem of a track, all or nothing.

    The stems are encoded into hidden staged files beside their targets and renamed into place
    together by an :class:`~demucs_rr.staging.OutputGroup` (missing folders are created). On
    failure nothing new is left behind, previous files are kept, and the folders this call
    created are removed.

    Raises:
        AudioIOError: one line; ``no space left on device while writing stems to FOLDER`` when
            the disk is full.
    """
    group = OutputGroup(outputs)
    try:
        group.prepare()
        for path, wav in outputs.items():
            encode_file(wav, group.staged[path], samplerate, options)
        group.commit()
    except BaseException as err:
        failure = group.failure(err) if isinstance(err, (OSError, RuntimeError)) else None
        group.abort()  # after group.failure: the space the partial files hold is still taken
        if failure is not None:
            raise failure from None
        raise
