"""The job queue of ``demucs-rr serve``: one SQLite database (WAL mode) under the jobs folder.

The web app and the worker processes share it: the app inserts and lists jobs, a worker claims
the oldest queued job atomically, reports progress and finishes or fails it. Every call opens
its own short-lived connection, so the store is safe to use from threads and processes.

States: ``queued`` -> ``running`` -> ``done`` | ``failed``. On start-up the app puts jobs left
``running`` by a previous server back in the queue (:meth:`JobStore.requeue_running`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demucs_rr.errors import DemucsRRError, one_line
from demucs_rr.staging import is_disk_full

_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL (named from Python 3.11)
STATES = ("queued", "running", "done", "failed")
TERMINAL = ("done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    stems TEXT NOT NULL DEFAULT '[]',
    device TEXT,
    worker INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    model_id TEXT,
    reserve INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, created);
"""
_COLUMNS = (
    "id, name, input, options, state, progress, error, stems, device, worker, created, "
    "started, finished, model_id, reserve"
)
_ADDED_COLUMNS = {"model_id": "TEXT", "reserve": "INTEGER NOT NULL DEFAULT 0"}
"""Columns added since the first release, added to an older database on start."""


class StoreUnavailable(DemucsRRError):
    """The job database cannot be read or written (disk full, damaged file, ...), in one line.

    Attributes:
        disk_full: the disk (or quota) holding the database is full.
    """

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


@dataclass
class Job:
    """One separation job as stored.

    Attributes:
        id: random hex id (the only handle on the job's files).
        name: display name of the upload (sanitised; never used as a path).
        input: file name of the stored upload inside the job folder (``input.wav``).
        options: the job's options (see :class:`demucs_rr.serve.jobs.JobOptions`).
        state: ``queued``, ``running``, ``done`` or ``failed``.
        progress: 0 to 1.
        error: one-line reason of a failed job.
        stems: written stems, ``[{"name": ..., "file": ...}]``, in output order.
        device: device the job ran on.
        worker: process id of the worker running it.
        created, started, finished: Unix times.
        model_id: identity of the model the job was submitted for
            (:func:`~demucs_rr.hub.identity.model_identity`); None for jobs of older servers.
        reserve: bytes of disk the job may still take (its stems at their peak) until it ends.
    """

    id: str
    name: str
    input: str
    options: dict[str, Any]
    state: str = "queued"
    progress: float = 0.0
    error: str | None = None
    stems: list[dict[str, str]] = field(default_factory=list)
    device: str | None = None
    worker: int | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    model_id: str | None = None
    reserve: int = 0

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        """Build a job from a ``SELECT {_COLUMNS}`` row."""
        values = dict(zip(_COLUMNS.split(", "), row, strict=True))
        values["options"] = json.loads(values["options"])
        values["stems"] = json.loads(values["stems"])
        return cls(**values)


class JobStore:
    """Jobs in ``<folder>/jobs.sqlite3`` (created on first use, WAL journal).

    Args:
        folder: the jobs folder (created if missing).
    """

    def __init__(self, folder: Path) -> None:
        """Open (create) the database.

        Raises:
            StoreUnavailable: it cannot be opened (a damaged file, no space), in one line.
        """
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "jobs.sqlite3"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode, closed on exit.

        Raises:
            StoreUnavailable: SQLite failed (one line; ``disk_full`` when the disk is full).
        """
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as err:
            raise self._unavailable(err) from None
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        except sqlite3.Error as err:
            raise self._unavailable(err) from None
        finally:
            db.close()

    def _unavailable(self, err: sqlite3.Error) -> StoreUnavailable:
        full = getattr(err, "sqlite_errorcode", None) == _SQLITE_FULL
        full = full or is_disk_full(err, self.path.parent)
        if full:
            return StoreUnavailable("no space left on the disk of the job database", True)
        hint = ""
        if isinstance(err, sqlite3.DatabaseError) and "not a database" in str(err):
            hint = "; move it away to start with no jobs (their folders are then removed)"
        return StoreUnavailable(
            f"the job database {self.path} cannot be used: {one_line(err)}{hint}"
        )

    def add(self, job: Job) -> Job:
        """Insert a new queued job (``created`` is set now); returns it."""
        job.created = job.created or time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, name, input, options, created, model_id, reserve) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.name,
                    job.input,
                    json.dumps(job.options),
                    job.created,
                    job.model_id,
                    job.reserve,
                ),
            )
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created, id").fetchall()
        return [Job.from_row(r) for r in rows]

    def ids(self) -> list[str]:
        """The id of every job."""
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT id FROM jobs")]

    def count(self, state: str) -> int:
        """How many jobs are in ``state``."""
        with self._connect() as db:
            return int(
                db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]
            )

    def reserved(self) -> int:
        """Bytes the queued and running jobs may still write (their ``reserve``)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(reserve), 0) FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
        return int(row[0])

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of the done or failed jobs that finished before ``cutoff`` (a Unix time)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND finished < ?",
                (cutoff,),
            ).fetchall()
        return [row[0] for row in rows]

    def claim(self, worker: int) -> Job | None:
        """Atomically move the oldest queued job to ``running`` for ``worker``; None if none."""
        with self._connect() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, started = ?, progress = 0 "
                "WHERE id = (SELECT id FROM jobs WHERE state = 'queued' "
                f"ORDER BY created, id LIMIT 1) RETURNING {_COLUMNS}",
                (worker, time.time()),
            ).fetchone()
        return None if row is None else Job.from_row(row)

    def _update_running(self, job_id: str, sql: str, params: tuple[Any, ...]) -> bool:
        """Run ``UPDATE jobs SET {sql}`` on a running job; False if it is no longer running."""
        with self._connect() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {sql} WHERE id = ? AND state = 'running'", (*params, job_id)
            )
            return cursor.rowcount == 1

    def set_progress(self, job_id: str, progress: float, device: str | None = None) -> bool:
        """Record progress (0-1) of a running job; False if it was deleted or is not running."""
        return self._update_running(
            job_id, "progress = ?, device = COALESCE(?, device)", (progress, device)
        )

    def finish(self, job_id: str, stems: list[dict[str, str]]) -> bool:
        """Mark a running job done with its stems; False if it is no longer running."""
        sql = "state = 'done', progress = 1, stems = ?, finished = ?"
        return self._update_running(job_id, sql, (json.dumps(stems), time.time()))

    def fail(self, job_id: str, error: str) -> bool:
        """Mark a running job failed with a one-line error; False if it is no longer running."""
        sql = "state = 'failed', error = ?, finished = ?"
        return self._update_running(job_id, sql, (error, time.time()))

    def requeue(self, job_id: str) -> bool:
        """Put a running job back in the queue (its worker was stopped)."""
        sql = "state = 'queued', progress = 0, worker = NULL, started = NULL"
        return self._update_running(job_id, sql, ())

    def requeue_running(self) -> int:
        """Put every running job back in the queue (start-up after a crash); returns how many."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', progress = 0, worker = NULL, started = NULL "
                "WHERE state = 'running'"
            )
            return cursor.rowcount

    def requeue_worker(self, worker: int) -> int:
        """Put the running jobs of a stopped worker process back in the queue; returns how
        many."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', progress = 0, worker = NULL, started = NULL "
                "WHERE state = 'running' AND worker = ?",
                (worker,),
            )
            return cursor.rowcount

    def fail_worker(self, worker: int, error: str) -> list[str]:
        """Fail the running jobs of a worker process that died; returns their ids."""
        with self._connect() as db:
            rows = db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished = ? "
                "WHERE state = 'running' AND worker = ? RETURNING id",
                (error, time.time(), worker),
            ).fetchall()
        return [row[0] for row in rows]

    def changes(self) -> ChangeReader:
        """A reader that tells when the jobs changed (see :class:`ChangeReader`)."""
        return ChangeReader(self)

    def delete(self, job_id: str) -> bool:
        """Remove a job's row; False if there was none."""
        with self._connect() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1


class ChangeReader:
    """Reads every job, but only after the database changed.

    It keeps one connection open and asks SQLite's ``PRAGMA data_version``, which changes when
    another connection commits: a look at an unchanged database costs one statement.
    Not thread-safe: one caller at a time (any thread).
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._db: sqlite3.Connection | None = None
        self._version: int | None = None

    def read(self) -> list[tuple[Any, ...]] | None:
        """Every job row (``SELECT {_COLUMNS}``, oldest first) if anything changed since the
        last call, else None.

        Raises:
            StoreUnavailable: SQLite failed (the connection is opened again next time).
        """
        try:
            if self._db is None:
                self._db = sqlite3.connect(
                    self.store.path, timeout=30, isolation_level=None, check_same_thread=False
                )
            version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
            if version == self._version:
                return None
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created, id").fetchall()
        except sqlite3.Error as err:
            self.close()
            raise self.store._unavailable(err) from None
        self._version = version
        return [tuple(row) for row in rows]

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
        self._db, self._version = None, None
