"""Serving a job's files (stems with HTTP Range, waveform PNGs, a zip of all stems) and the
server facts the page shows (model, device, sources)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse

from demucs_rr.errors import DemucsRRError
from demucs_rr.runtime import resolve_device
from demucs_rr.serve.jobs import MAX_SHIFTS, MEDIA_TYPES, file_stem, job_dir, model_label
from demucs_rr.serve.store import Job
from demucs_rr.serve.upload import HTTPProblem
from demucs_rr.serve.worker import MODEL_FACTS
from demucs_rr.sources import MUSDB_SOURCES
from demucs_rr.staging import atomic_write

if TYPE_CHECKING:
    from demucs_rr.serve.config import ServeConfig


SIX_SOURCES = (*MUSDB_SOURCES, "guitar", "piano")
"""Stems of the released ``htdemucs_6s``; the other released models have MUSDB's four."""


def known_sources(model: str, repo: str | None = None) -> list[str] | None:
    """Stem names of a model without loading it (a released name, or a demucs_rr package given
    by path or found in ``repo``); None when they cannot be told without loading it."""
    from demucs_rr.hub.catalogue import PRETRAINED
    from demucs_rr.hub.package import read_package_metadata
    from demucs_rr.hub.releases import OFFICIAL_BAGS
    from demucs_rr.hub.sources import FolderSource

    path = Path(model)
    try:
        if not path.is_file() and repo is not None:
            path = FolderSource(Path(repo)).find(model) or path
        if path.suffix == ".safetensors" and path.is_file():
            sources = read_package_metadata(path)["kwargs"].get("sources")
        elif model in PRETRAINED:
            sources = PRETRAINED[model].kwargs.get("sources")
        elif model in OFFICIAL_BAGS:
            sources = list(SIX_SOURCES if model == "htdemucs_6s" else MUSDB_SOURCES)
        else:
            sources = None
    except (DemucsRRError, KeyError, OSError):
        sources = None
    return [str(s) for s in sources] if isinstance(sources, list) else None


def model_sources(model: str, repo: str | None = None) -> list[str]:
    """Stem names of a model without loading it (MUSDB's four when they cannot be told); the
    workers report the real ones once the model is loaded (:func:`loaded_model_facts`)."""
    return known_sources(model, repo) or list(MUSDB_SOURCES)


def offered_models(repo: str | None = None) -> list[str]:
    """The names ``demucs-rr models list`` shows, less the released ones demucs_rr refuses to
    load (the DiffQ-quantized ``mdx_q`` and ``mdx_extra_q``)."""
    from demucs_rr.hub.loader import list_models
    from demucs_rr.hub.releases import OFFICIAL_BAGS

    refused = {name for name, info in OFFICIAL_BAGS.items() if info.refused is not None}
    rows = list_models(Path(repo) if repo else None)
    return [row["name"] for row in rows if row["name"] not in refused]


def loaded_model_facts(config: ServeConfig) -> dict[str, Any]:
    """Stems and device of the server model as a worker loaded it (empty until one did)."""
    try:
        facts = json.loads((config.jobs_dir / MODEL_FACTS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(facts, dict) or facts.get("for") != config.model:
        return {}  # written by an earlier server with another model
    return {key: facts[key] for key in ("sources", "device") if key in facts}


def server_info(config: ServeConfig, version: str) -> dict[str, Any]:
    """What ``GET /api/info`` reports; the first of ``models`` is the default.

    Raises:
        ConfigError: the device is unknown or not available.
    """
    label = model_label(config.model)
    known = offered_models(config.repo)
    return {
        "version": version,
        "model": label,
        "device": str(resolve_device(config.device)),
        "models": [label, *(name for name in known if name != label)],
        "sources": model_sources(config.model, config.repo),
        "workers": config.workers,
        "max_upload_mb": config.max_upload_mb,
        "max_shifts": MAX_SHIFTS,
        "token_required": config.token is not None,
    }


def _stem_file(job: Job, root: Path, stem: str) -> Path:
    """Path of a finished job's stem; 404 for an unknown stem or a job not done."""
    if job.state != "done":
        raise HTTPProblem(404, f"job {job.id} is {job.state}: its stems are not ready")
    for entry in job.stems:
        if entry["name"] == stem:
            return job_dir(root, job.id) / "stems" / entry["file"]
    names = ", ".join(s["name"] for s in job.stems)
    raise HTTPProblem(404, f"job {job.id} has no stem {stem[:40]!r} (it has {names})")


def build_zip(job: Job, root: Path) -> Path:
    """``stems.zip`` of a finished job (made once, atomically): ``<track>/<stem>.<ext>``."""
    folder = job_dir(root, job.id)
    target = folder / "stems.zip"
    if target.exists():
        return target
    track = file_stem(job.name)
    with (
        atomic_write(target) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive,
    ):
        for entry in job.stems:
            archive.write(folder / "stems" / entry["file"], f"{track}/{entry['file']}")
    return target


def add_file_routes(app: FastAPI, find: Callable[[str], Job], root: Path) -> None:
    """Routes that return a job's files; ``find`` gives the job of an id (or raises 404)."""

    @app.head("/api/jobs/{job_id}/stems/{stem}", include_in_schema=False)
    @app.get("/api/jobs/{job_id}/stems/{stem}", summary="A stem (supports HTTP Range)")
    def stem_file(job_id: str, stem: str, download: bool = False) -> FileResponse:
        job = find(job_id)
        path = _stem_file(job, root, stem)
        ext = path.suffix.lstrip(".")
        return FileResponse(
            path,
            media_type=MEDIA_TYPES.get(ext, "application/octet-stream"),
            filename=f"{file_stem(job.name)}-{stem}.{ext}",
            content_disposition_type="attachment" if download else "inline",
        )

    @app.head("/api/jobs/{job_id}/stems/{stem}/waveform.png", include_in_schema=False)
    @app.get("/api/jobs/{job_id}/stems/{stem}/waveform.png", summary="A stem's waveform")
    def waveform(job_id: str, stem: str) -> FileResponse:
        job = find(job_id)
        _stem_file(job, root, stem)
        path = job_dir(root, job.id) / "waveforms" / f"{stem}.png"
        if not path.is_file():
            raise HTTPProblem(404, f"job {job.id} has no waveform of {stem!r}")
        return FileResponse(path, media_type="image/png")

    @app.head("/api/jobs/{job_id}/zip", include_in_schema=False)
    @app.get("/api/jobs/{job_id}/zip", summary="Every stem of a job in one zip")
    def zip_file(job_id: str) -> FileResponse:
        job = find(job_id)
        if job.state != "done":
            raise HTTPProblem(404, f"job {job.id} is {job.state}: its stems are not ready")
        return FileResponse(
            build_zip(job, root),
            media_type="application/zip",
            filename=f"{file_stem(job.name)}-stems.zip",
        )
