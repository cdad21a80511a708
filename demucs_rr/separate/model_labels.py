"""``{model}`` in output paths names one model: two different models whose files share a name
(two ``package.th`` in different folders) are not written under the same label.

The output root records which model each output layout stands for in
``.demucs_rr_models.json`` (``{template with the label: {"identity": ..., "source": ...}}``):
the sha256 of a model file, or a released name. A run whose layout is recorded for another
model is refused in one line before anything is separated; the record is written once the run
wrote stems.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from demucs_rr.errors import ConfigError
from demucs_rr.hub.fetch import sha256_file
from demucs_rr.staging import atomic_write, folder_lock

__all__ = ["RECORD_NAME", "check_label", "model_identity", "record_label"]

RECORD_NAME = ".demucs_rr_models.json"


def model_identity(name_or_path: str, repo: str | Path | None = None) -> tuple[str, str]:
    """``(identity, source)`` of a ``-n`` argument: the sha256 of its file, or the name."""
    path = Path(name_or_path).expanduser()
    if not path.is_file() and repo is not None:
        found = sorted(Path(repo).expanduser().glob(f"{path.name}.*"))
        path = found[0] if len(found) == 1 else path
    if path.is_file():
        return f"sha256:{sha256_file(path)}", str(path.resolve())
    return f"name:{name_or_path}", str(name_or_path)


def _read(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_label(out: Path, template: str, label: str, identity: tuple[str, str]) -> None:
    """Refuse writing under ``label`` when ``out`` records it for another model.

    Raises:
        ConfigError: one line naming both models and what to do.
    """
    if "{model}" not in template:
        return
    entry = _read(out).get(template.replace("{model}", label))
    if not isinstance(entry, dict) or entry.get("identity") in (None, identity[0]):
        return
    raise ConfigError(
        f"{out} already holds stems of another model named {label!r} ({entry.get('source')}); "
        f"this one is {identity[1]}: pass another -o, or a --filename whose {{model}} part "
        "differs (e.g. '{model}-2/{track}/{stem}.{ext}')"
    )


def record_label(out: Path, template: str, label: str, identity: tuple[str, str]) -> None:
    """Record that ``label`` under ``out`` stands for ``identity`` (after stems were written)."""
    if "{model}" not in template or not out.is_dir():
        return
    with folder_lock(out):
        data = _read(out)
        data[template.replace("{model}", label)] = {"identity": identity[0], "source": identity[1]}
        with atomic_write(out / RECORD_NAME) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
