"""Process-wide state is owned by the entry points: importing demucs_rr and running
``cli.main`` in-process change no thread count, allocator setting, signal handler or logging
handler; ``configure_process`` (what the entry points call) changes each of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from demucs_rr import __main__ as entry
from demucs_rr.process import _glibc, set_threads

_PROBE = """
import json, logging, os, resource, signal, sys
import numpy as np, soundfile as sf, torch
torch.set_num_threads(2)
# Python's own SIGINT handler, as in a foreground start: a shell starts background jobs with
# SIGINT ignored, which Python keeps, and ignoring it could not then be seen to change
signal.signal(signal.SIGINT, signal.default_int_handler)

def malloc_faults():
    # minor page faults of the 2nd and 3rd allocation of a 64 MiB block: plain glibc maps
    # every such block afresh; with freed memory kept, the same pages come back
    counts = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20).sum()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts[1] + counts[2]

def state():
    return {
        "threads": torch.get_num_threads(),
        "sigterm": str(signal.getsignal(signal.SIGTERM)),
        "sigint": str(signal.getsignal(signal.SIGINT)),
        "log_handlers": len(logging.getLogger().handlers),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "faults": malloc_faults(),
    }

before = state()
import demucs_rr, demucs_rr.cli, demucs_rr.hub, demucs_rr.models, demucs_rr.separate.api
from demucs_rr.hub import save_package
from demucs_rr.models.testing import FractionModel
package = save_package(FractionModel(["a", "b"], [0.5, 0.5]), sys.argv[1] + "/m.safetensors")
sf.write(sys.argv[1] + "/song.wav", np.zeros((4410, 2), dtype="float32"), 44100)
after_import = state()
code = demucs_rr.cli.main(
    ["--threads", "1", "-v", "separate", "-q", sys.argv[1] + "/song.wav", "-n", str(package),
     "-o", sys.argv[1] + "/out"]
)
after_main = state()
if sys.argv[2] == "configure":
    demucs_rr.configure_process(threads=1, keep_freed_memory=True, signals=True,
                                ignore_interrupt=True, verbose=True)
configured = state()
print(json.dumps({"code": code, "before": before, "import": after_import, "main": after_main,
                  "configured": configured}))
"""


def _probe(tmp_path: Path, mode: str) -> dict[str, Any]:
    env = {**os.environ, "DEMUCS_RR_MALLOC": ""}
    env.pop("OMP_WAIT_POLICY", None)
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.integration
@pytest.mark.skipif(not _glibc(), reason="the allocator setting is glibc's")
def test_import_and_in_process_main_change_no_process_state(tmp_path: Path) -> None:
    seen = _probe(tmp_path, "leave")
    assert seen["code"] == 0
    before = seen["before"]
    assert before["faults"] > 20_000, before  # the probe sees plain glibc's fresh mappings
    for step in ("import", "main", "configured"):
        changed = {k: v for k, v in seen[step].items() if k != "faults" and v != before[k]}
        assert not changed, f"{step}: {changed}"
        assert seen[step]["faults"] > 20_000, f"{step}: malloc keeps freed memory"


@pytest.mark.integration
@pytest.mark.skipif(not _glibc(), reason="the allocator setting is glibc's")
def test_configure_process_changes_each_setting(tmp_path: Path) -> None:
    seen = _probe(tmp_path, "configure")
    before, configured = seen["main"], seen["configured"]
    assert configured["threads"] == 1 != before["threads"]
    assert configured["sigterm"] != before["sigterm"]
    assert configured["sigint"] != before["sigint"]
    assert configured["log_handlers"] == before["log_handlers"] + 1
    assert configured["faults"] < 2_000, configured


def test_entry_point_configures_from_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(entry, "configure_process", lambda **kw: seen.append(kw))
    monkeypatch.setattr(entry, "run", lambda args: 0)
    for argv in (
        ["--threads", "3", "models", "list"],
        ["models", "list", "--threads", "4"],
        ["separate", "x.wav", "--threads", "5"],
        ["-v", "train", "model=tiny"],
    ):
        assert entry.main(argv) == 0
    assert [kw["threads"] for kw in seen] == [3, 4, 5, None]
    assert [kw["keep_freed_memory"] for kw in seen] == [False, False, True, True]
    assert [kw["verbose"] for kw in seen] == [False, False, False, True]
    assert all(kw["signals"] for kw in seen)
    assert entry.separate(["--threads", "6", "x.wav"]) == 0
    assert seen[-1]["threads"] == 6 and seen[-1]["keep_freed_memory"]


def test_interop_threads_already_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def too_late(threads: int) -> None:
        raise RuntimeError("Error: cannot set number of interop threads after parallel work")

    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "set_num_interop_threads", too_late)
    set_threads(2)
    assert calls == [2]


_WAIT = """
import os, sys
from demucs_rr.process import configure_process
if sys.argv[1] == "torch-first":
    import torch
configure_process()
import torch
print(os.environ.get("OMP_WAIT_POLICY"))
"""

_ORPHAN = """
import os, sys, time
from demucs_rr.process import die_with_parent
pid = os.fork()
if pid == 0:
    armed = die_with_parent()
    with open(sys.argv[1], "w") as handle:
        handle.write(f"{os.getpid()} {armed}")
    time.sleep(60)
    os._exit(0)
while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
    time.sleep(0.01)
os._exit(0)  # the parent ends first, as a killed server does
"""


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env", "order", "policy"),
    [
        ({}, "entry-first", "PASSIVE"),  # the entry points: set before torch starts its pool
        ({}, "torch-first", "None"),  # too late: left alone rather than half-applied
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "entry-first", "ACTIVE"),  # the user's choice wins
        ({"GOMP_SPINCOUNT": "1000"}, "entry-first", "None"),
        ({"DEMUCS_RR_WAIT_POLICY": "torch"}, "entry-first", "None"),  # opt-out
    ],
)
def test_wait_policy_is_set_before_torch(env: dict[str, str], order: str, policy: str) -> None:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DEMUCS_RR_WAIT_POLICY")
    }
    run = subprocess.run(
        [sys.executable, "-c", _WAIT, order],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == policy


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_process_that_asked_dies_with_its_parent(tmp_path: Path) -> None:
    marker = tmp_path / "child"
    subprocess.run([sys.executable, "-c", _ORPHAN, str(marker)], check=True, timeout=60)
    pid, armed = marker.read_text().split()
    assert armed == "True"
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text():
            return
        time.sleep(0.05)
    os.kill(int(pid), 9)
    raise AssertionError("the child outlived its parent")
