"""The command line answers ``--help`` and usage errors without importing torch or OmegaConf
(< 1 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
from demucs_rr.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "numpy", "soundfile", "omegaconf") if m in sys.modules)
print("HEAVY", ",".join(heavy), "CODE", code, file=sys.stderr)
"""


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        ["separate", "--help"],
        ["--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["serve", "--help"],
        ["models", "convert", "--help"],
        ["separate"],  # usage error: no tracks
        ["separate", "x.wav", "--overlap", "2"],  # usage error: bad value
    ],
)
def test_help_and_usage_errors_do_not_import_torch(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("HEAVY"), proc.stderr
    heavy = last.split()[1] if len(last.split()) > 3 else ""
    assert "torch" not in heavy, f"{argv}: torch imported before the command ran"
    assert "omegaconf" not in heavy, f"{argv}: OmegaConf imported before the command ran"
    expected = "0" if "--help" in argv else "2"
    assert last.endswith(f"CODE {expected}"), proc.stderr


def test_lazy_package_attributes_resolve() -> None:
    import demucs_rr
    import demucs_rr.audio
    import demucs_rr.evaluate
    import demucs_rr.models

    for package in (demucs_rr.audio, demucs_rr.evaluate, demucs_rr.models):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        with pytest.raises(AttributeError):
            package.no_such_name  # noqa: B018
    assert demucs_rr.Separator.__name__ == "Separator"
