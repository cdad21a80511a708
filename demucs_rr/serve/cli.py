"""The ``demucs-rr serve`` command: options, safety checks, then uvicorn.

This module imports nothing of the ``[serve]`` extra at import time, so ``demucs-rr --help``
works without it; running the command without it fails with a one-line install hint.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from demucs_rr import argtypes
from demucs_rr.errors import ConfigError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "DEMUCS_RR_TOKEN"
EXTRA_MODULES = ("fastapi", "uvicorn", "python_multipart")


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _limit(kind: Callable[[str], float]) -> Callable[[str], float | None]:
    """Parser of a non-negative number of type ``kind``; 0 means no limit (None)."""

    def parse(text: str) -> float | None:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (0: no limit), got {value}")
        return value or None

    return parse


def _port(text: str) -> int:
    value = argtypes.non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be within 0..65535, got {value}")
    return value


def _add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The limits of :mod:`demucs_rr.serve.limits` (defaults: :class:`Limits`'s)."""
    p.add_argument(
        "--max-upload-mb",
        type=_megabytes,
        default=500.0,
        help="largest accepted upload in MB (default 500)",
    )
    p.add_argument(
        "--max-audio-minutes",
        type=_limit(float),
        default=60.0,
        metavar="MIN",
        help="longest accepted audio, checked on upload and while decoding (default 60; 0: any)",
    )
    p.add_argument(
        "--max-queued-jobs",
        type=_limit(int),
        default=50,
        metavar="N",
        help="uploads are refused (429) while N jobs wait (default 50; 0: no limit)",
    )
    p.add_argument(
        "--max-disk-gb",
        type=_limit(float),
        default=20.0,
        metavar="GB",
        help="quota of the jobs folder: uploads whose stems would not fit are refused (507) "
        "(default 20; 0: only the free disk space)",
    )
    p.add_argument(
        "--keep-hours",
        type=_limit(float),
        default=72.0,
        metavar="H",
        help="finished jobs are deleted with their files H hours after they ended "
        "(default 72; 0: kept until deleted)",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``demucs-rr serve``."""
    from demucs_rr.hub.catalogue import DEFAULT_MODEL
    from demucs_rr.runtime import cache_dir
    from demucs_rr.separate.options import add_engine_arguments

    p = parser
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "-n",
        "--model",
        default=DEFAULT_MODEL,
        help=f"default model: pretrained name or model file (default {DEFAULT_MODEL})",
    )
    p.add_argument("--repo", help="folder searched first for model files")
    p.add_argument(
        "--jobs-dir",
        type=Path,
        default=cache_dir() / "serve",
        help="job database, uploads and stems (default: the cache folder's serve/)",
    )
    _add_limit_arguments(p)
    p.add_argument(
        "--workers",
        type=argtypes.positive_int,
        default=1,
        help="separation worker processes, each with its own model copy (default 1)",
    )
    p.add_argument("-d", "--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    add_engine_arguments(p, shifts=False)  # each job chooses its shifts
    p.add_argument(
        "--token",
        help=f"access token required by the API (default ${TOKEN_ENV}); "
        "mandatory when --host is not a loopback address",
    )


def _check_extra() -> None:
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"demucs-rr serve needs the serve extra (missing {', '.join(missing)}): "
            "pip install 'demucs_rr[serve]'"
        )


def _check_precision(device: str, precision: str) -> None:
    """Refuse, before the server starts, a precision the workers' device cannot run."""
    from demucs_rr.runtime import resolve_device
    from demucs_rr.separate.precision import check_precision

    check_precision(precision, resolve_device(device))


def _check_model(model: str, repo: str | None) -> None:
    """Refuse a model that is neither a file nor a name of ``demucs-rr models list``, and the
    released names demucs_rr cannot load (with the reason)."""
    from demucs_rr.hub.releases import OFFICIAL_BAGS
    from demucs_rr.serve.job_files import offered_models

    if Path(model).expanduser().is_file() or model in offered_models(repo):
        return
    refused = OFFICIAL_BAGS[model].refused if model in OFFICIAL_BAGS else None
    if refused is not None:
        raise ConfigError(refused)
    raise ConfigError(
        f"unknown model {model!r}: not a pretrained name (see `demucs-rr models list`) "
        "and no such file"
    )


def _check_port(host: str, port: int) -> None:
    """Fail with one line when the address cannot be bound (in use, not local, ...)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _lock(jobs_dir: Path) -> IO[str] | None:
    """Hold ``<jobs-dir>/.lock`` for the process's life: one server per jobs folder."""
    try:
        import fcntl
    except ImportError:  # not on Windows
        return None
    jobs_dir.mkdir(parents=True, exist_ok=True)
    handle = (jobs_dir / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"{jobs_dir} is used by another demucs-rr serve") from None
    return handle


def run_serve(args: argparse.Namespace) -> int:
    """Check the options, then serve until interrupted."""
    _check_extra()
    from demucs_rr.serve.security import MIN_TOKEN_LENGTH

    token = args.token or os.environ.get(TOKEN_ENV) or None
    local = args.host in LOCAL_HOSTS
    if not local and token is None:
        raise ConfigError(
            f"--host {args.host} exposes the server to the network: "
            f"give an access token with --token or ${TOKEN_ENV}"
        )
    if not local and token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the access token is {len(token)} characters long: a server on the network needs "
            f"at least {MIN_TOKEN_LENGTH} (python -c 'import secrets; print(secrets.token_hex())')"
        )
    _check_model(args.model, args.repo)
    argtypes.refuse_conflicts(argtypes.chunking_conflicts(args))
    _check_precision(args.device, args.precision)
    _check_port(args.host, args.port)
    lock = _lock(args.jobs_dir)
    try:
        _run_locked(args, token, local)
    finally:
        if lock is not None:
            lock.close()
    return 0


def _run_locked(args: argparse.Namespace, token: str | None, local: bool) -> None:
    """Build the app and serve it (the jobs folder is locked)."""
    import uvicorn

    from demucs_rr.separate.options import engine_options
    from demucs_rr.serve.app import create_app
    from demucs_rr.serve.config import ServeConfig
    from demucs_rr.serve.limits import Limits

    threads = getattr(args, "threads", None) or max(1, (os.cpu_count() or 1) // args.workers)
    config = ServeConfig(
        jobs_dir=args.jobs_dir.resolve(),
        model=args.model,
        device=args.device,
        repo=args.repo,
        workers=args.workers,
        threads=threads,
        engine=engine_options(args),
        max_upload_mb=args.max_upload_mb,
        token=token,
        allowed_hosts=LOCAL_HOSTS + ("[::1]",) if local and token is None else None,
        limits=Limits(
            args.max_audio_minutes, args.max_queued_jobs, args.max_disk_gb, args.keep_hours
        ),
    )
    app = create_app(config)
    info = app.state.serve.info
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(
        f"demucs-rr serve: {url} (model {info['model']}, device {info['device']}, "
        f"{args.workers} worker(s) x {threads} thread(s), jobs in {config.jobs_dir})",
        file=sys.stderr,
        flush=True,
    )
    _serve(uvicorn, app, args.host, args.port)


def _serve(uvicorn: Any, app: Any, host: str, port: int) -> None:
    """Run uvicorn until a signal stops it; SIGINT then ends like Ctrl-C elsewhere (exit 130).

    When the shutdown begins, the open event streams are ended, so that only real requests can
    hold it (for 3 s at most: uvicorn then cancels them).

    uvicorn handles SIGINT and SIGTERM itself (a graceful shutdown) and raises the signal again
    once it is done: SIGTERM then reaches the entry point's handler (exit 143), but SIGINT
    reaches asyncio's, which ends quietly; it is raised here instead.
    """
    stopped_by: list[int] = []

    class Server(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: Any) -> None:
            stopped_by.append(sig)
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            app.state.end_streams()  # open event streams end now, not at the 3 s timeout
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3
    )
    Server(config).run()
    if signal.SIGINT in stopped_by:
        raise KeyboardInterrupt
