"""The documentation keeps up with the code: every command-line option is documented in
``docs/``, the README stays short, its set-up lines match CI, and no relative link is broken."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
MAX_README_LINES = 220

LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
"""Inline Markdown links and images: ``[text](target)``, ``![alt](target)``."""


def pages() -> list[Path]:
    """The README and every page of ``docs/``."""
    return [README, *sorted(DOCS.glob("*.md"))]


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command path, parser)`` for ``parser`` and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def undocumented(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``"COMMAND: --option"`` for every option string of every command absent from ``text``.

    An option counts as documented where it appears as a whole token (``-n`` inside
    ``--no-split`` does not count). ``-h/--help`` is argparse's own.
    """
    missing = []
    for path, sub in commands(parser):
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                    missing.append(f"{' '.join(('demucs-rr', *path))}: {option}")
    return missing


def docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def test_every_option_is_documented() -> None:
    from demucs_rr.cli import build_parser

    missing = undocumented(build_parser(), docs_text())
    assert not missing, f"options not documented in docs/*.md: {missing}"


def test_option_check_finds_an_undocumented_option() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers().add_parser("separate")
    sub.add_argument("-n", "--name")
    sub.add_argument("--no-such-option")
    text = "`-n/--name` and `--no-such-option-either`"
    assert undocumented(parser, text) == ["demucs-rr separate: --no-such-option"]
    assert undocumented(parser, "--no-split") == [
        "demucs-rr separate: -n",
        "demucs-rr separate: --name",
        "demucs-rr separate: --no-such-option",
    ]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def _heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lowercase, punctuation dropped, spaces to -)."""
    anchors = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(slug.replace(" ", "-"))
    return anchors


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` to a missing file, or to a missing heading of a page."""
    broken = []
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _heading_anchors(dest):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    assert not broken_links(page), f"{page.relative_to(REPO)}: {broken_links(page)}"


def test_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## The `x` option\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md) [ok](a.md#the-x-option) [web](https://example.org/missing.md)\n"
        "![img](gone.png) [file](missing.md) [heading](a.md#nothing)\n"
        "```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == [
        "gone.png (no such file)",
        "missing.md (no such file)",
        "a.md#nothing (no such heading)",
    ]


def _ci_script() -> str:
    return (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_setup_matches_ci() -> None:
    """The README's two set-up lines come first and install what CI installs."""
    readme = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None
    torch_pin = re.search(r"pip install .*?(torch==[\d.]+)", _ci_script())
    assert torch_pin is not None
    pin = torch_pin.group(1)
    assert first_block.group(1).splitlines() == [
        f"pip install {pin} && pip install . && separate song.mp3",
        f"pip install {pin} && pip install -e '.[dev]' && python3 -m pytest -q",
    ]


def test_readme_names_the_ci_system_packages() -> None:
    install = re.search(r"apt-get install (.*)", _ci_script())
    assert install is not None
    packages = [w for w in shlex.split(install.group(1).split(">")[0]) if not w.startswith("-")]
    assert packages, install.group(0)
    assert f"apt-get install {' '.join(packages)}" in README.read_text(encoding="utf-8")
