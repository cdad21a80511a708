"""Running the command lines a docs page shows, as a reader of this checkout would.

Entry-point shims (``demucs-rr``, ``separate``, ``python``/``python3``) put first on PATH run this
checkout with the interpreter running the tests; each line runs in bash (``set -eo pipefail``)
in the reader's folder and must exit 0 without a traceback or an argparse error.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ENTRY_POINTS = {
    "python": '{python} "$@"',
    "python3": '{python} "$@"',
    "demucs-rr": '{python} -m demucs_rr "$@"',
    "separate": "{python} -c 'import sys; from demucs_rr.__main__ import separate; "
    'sys.exit(separate())\' "$@"',
}
"""Shims so the commands run this checkout with the interpreter running the tests."""

_DISTRIBUTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def reader_environment(folder: Path, *, offline: bool = False) -> dict[str, str]:
    """Environment whose PATH starts with the shims written to ``folder`` (created), a private
    model cache beside it, no torchrun variables; ``offline``: downloads are refused."""
    folder.mkdir()
    for name, body in ENTRY_POINTS.items():
        shim = folder / name
        shim.write_text("#!/bin/sh\nexec " + body.format(python=shlex.quote(sys.executable)) + "\n")
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED}
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    env["DEMUCS_RR_CACHE"] = str(folder.parent / "cache")
    if offline:
        env["DEMUCS_RR_REMOTE"] = "x:/"
    return env


def run_lines(lines: Iterable[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run each line in ``cwd``, in order; returns their standard outputs.

    Raises:
        AssertionError: a line failed, printed a traceback or an argparse ``error:`` (its
            output tails in the message).
    """
    outputs = []
    for line in lines:
        proc = subprocess.run(
            ["bash", "-c", f"set -eo pipefail; {line}"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        tails = f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert proc.returncode == 0, tails
        assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, tails
        outputs.append(proc.stdout)
    return outputs
