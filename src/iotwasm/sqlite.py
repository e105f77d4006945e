"""Opening the node's SQLite databases, one way for all of them.

Node state, rule checkpoints, the outbox, the local results store, tokens, the audit log,
alert rules, module signatures and the registry index are each one SQLite file, and each was
opened with the same few settings; they live here so a store states only where it differs.
"""

from __future__ import annotations

import sqlite3
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
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    if schema:
        db.executescript(schema)
    return db
