"""Release surfaces: Dockerfile, packaging metadata, version, changelog, and the layout lists of
the README and ``docs/development.md``.

No image registry is reachable from CI, so the Docker image is not built here; instead the
Dockerfile is checked to copy every path that its ``pip install .`` reads (the class of break
where ``conf/`` was missing and the build stopped).
"""

from __future__ import annotations

import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest

import demucs_rr

REPO = Path(__file__).resolve().parents[2]

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _docker_copies() -> set[str]:
    """Source paths of the Dockerfile's COPY instructions (normalised, no trailing slash)."""
    sources: set[str] = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.strip().upper().startswith("COPY "):
            words = shlex.split(line.split("#", 1)[0])
            args = [w for w in words[1:] if not w.startswith("--")]
            sources.update(a.rstrip("/").removeprefix("./") for a in args[:-1])
    return sources


def _install_inputs(project: dict) -> set[str]:
    """Top-level paths that ``pip install .`` reads: build config, readme, package folders."""
    setuptools = project["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    needed = {"pyproject.toml", project["project"]["readme"]}
    for package in setuptools["packages"]:
        folder = mapped.get(package, package.replace(".", "/"))
        needed.add(folder.split("/")[0])
    return needed


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    copied = _docker_copies()
    missing = sorted(p for p in _install_inputs(_pyproject()) if p not in copied)
    assert not missing, f"the Dockerfile's pip install . needs {missing}, which it does not COPY"


def test_docker_check_detects_a_missing_folder() -> None:
    """The check above fails when a package folder is not copied."""
    project = _pyproject()
    project["tool"]["setuptools"]["package-dir"] = {"demucs_rr.conf": "presets"}
    assert "presets" in _install_inputs(project) - _docker_copies()


def test_every_subpackage_is_packaged() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "demucs_rr").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "subpackages missing from [tool.setuptools] packages"
    conf = REPO / "conf"
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["demucs_rr.conf"]
    shipped = {p for pattern in patterns for p in conf.glob(pattern)}
    assert set(conf.rglob("*.yaml")) == shipped, "YAML presets missing from package-data"


def test_released_bag_files_are_packaged() -> None:
    """The bag YAMLs of the released Demucs 3/4 models ship in the wheel."""
    hub = REPO / "demucs_rr" / "hub"
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["demucs_rr.hub"]
    shipped = {p for pattern in patterns for p in hub.glob(pattern)}
    assert set((hub / "remote").glob("*.yaml")) == shipped
    assert {p.stem for p in shipped} >= {"htdemucs", "htdemucs_ft", "mdx", "mdx_extra"}


def test_one_version_source() -> None:
    assert _pyproject()["project"]["dynamic"] == ["version"]
    assert metadata.version("demucs_rr") == demucs_rr.__version__
    changelog = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+)", changelog, flags=re.M)
    assert versions and versions[0] == demucs_rr.__version__, "CHANGELOG's newest release"


def _layout(text: str, start: str) -> str:
    """The part of ``text`` from ``start`` to the next heading."""
    layout = text[text.index(start) + len(start) :]
    return layout.split("\n#", 1)[0]


@pytest.mark.parametrize(
    ("page", "start"), [("README.md", "Layout:"), ("docs/development.md", "## Layout")]
)
def test_layout_names_every_subpackage(page: str, start: str) -> None:
    layout = _layout((REPO / page).read_text(encoding="utf-8"), start)
    for init in sorted((REPO / "demucs_rr").glob("*/__init__.py")):
        assert f"demucs_rr/{init.parent.name}" in layout, f"{page} layout lacks {init.parent.name}"
