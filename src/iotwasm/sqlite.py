"""Opening the node's SQLite databases, one way for all of them.

Node state, rule checkpoints, the outbox, the local results store, tokens, the audit log,
alert rules, module signatures and the registry index are each one SQLite file, and each was
opened with the same few settings; they live here so a store states only where it differs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal


def open_db(path: str | Path, *, synchronous: Literal["NORMAL", "FULL"], schema: str | None = None,
            timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to the database at `path` (its directory is created when missing).

    Why each setting:

    * ``journal_mode=WAL``: readers never block the writer nor the writer them, so the API and
      the CLI can read while the node writes, and a kill -9 loses no committed transaction.
    * `synchronous`: ``NORMAL`` under WAL syncs at checkpoints only; a commit survives the
      process dying but the last ones may be lost when the machine loses power. It suits data
      the node can rebuild or re-receive (state, queues, checkpoints, results). ``FULL`` syncs
      the WAL at every commit, for records that must outlive a power cut once acknowledged
      (tokens, the audit chain, signatures). Each caller chooses; there is no default.
    * `timeout_s`, SQLite's busy timeout: another process (a CLI command, a second node on
      a shared registry) holding the write lock makes a writer wait this long before failing
      with "database is locked", instead of failing at once.
    * ``isolation_level=None`` (autocommit): each statement commits by itself, and a store that
      needs a transaction says so with an explicit ``BEGIN``/``BEGIN IMMEDIATE``; the sqlite3
      module's implicit transactions would otherwise hold locks between statements.
    * ``check_same_thread=False``: the stores are called from the event loop and from worker
      threads; each guards its connection with its own lock instead.
    * `schema`: a script of ``CREATE … IF NOT EXISTS`` statements run at once, so opening a
      new file and reopening an existing one are the same call.
    * modes: the file is made 0600 before SQLite opens it (its directory 0700 when created
      here), and SQLite gives the ``-wal`` and ``-shm`` files the database's own mode; an
      existing file readable by others is tightened. The databases hold tokens' hashes, audit
      rows, kv data, dead-letter payloads and secret config values.
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    if schema:
        db.executescript(schema)
    return db


def _private(path: Path) -> None:
    """Create `path` with mode 0600, or take group and other access from it and its WAL files."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    except OSError:
        return  # not creatable here (":memory:", a read-only place): SQLite reports it
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
        except OSError:
            pass


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken up front (``BEGIN IMMEDIATE``) so concurrent writers queue
    for it instead of failing halfway when a read lock cannot be upgraded; rolled back when the
    block raises. The caller holds whatever lock guards `db` between threads."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
