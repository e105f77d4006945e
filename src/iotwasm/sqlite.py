"""Opening the node's SQLite databases, one way for all of them.

Node state, rule checkpoints, the outbox, the local results store, tokens, the audit log,
alert rules, module signatures and the registry index are each one SQLite file, and each was
opened with the same few settings; they live here so a store states only where it differs.

Storage failures are typed here too. Every statement on a connection from `open_db` that
fails because of the storage — the disk is full, the file system is read-only, a permission
is missing, the file is corrupt or locked too long — raises `StorageError` naming the file
and the reason (the operating system's, where SQLite's own message does not say), instead of
a bare ``sqlite3.OperationalError("unable to open database file")``. Callers react to one
type, in one way: hold the work and retry it. A statement that fails like this inside an
explicit transaction rolls the transaction back, so the next ``BEGIN`` on the connection
works (SQLite may leave it open). Errors in the statements themselves (SQL, constraints, a
closed connection) stay what sqlite3 raises: those are bugs, not weather.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from .errors import StorageError

log = logging.getLogger("iotwasm.sqlite")

#: the largest integer SQLite stores: a larger one from outside (an id, a row number) is
#: refused where it enters, not met as an OverflowError inside a query
MAX_INTEGER = 2**63 - 1

#: SQLite primary result codes meaning the storage failed, not the statement: PERM, BUSY,
#: LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB
STORAGE_CODES = frozenset({3, 5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
#: codes whose message does not say why ("unable to open database file"): ask the file system
_ASK_THE_OS = frozenset({3, 8, 10, 13, 14})


def storage_error(what: str, path: str | Path, e: sqlite3.Error) -> StorageError | None:
    """`e` as a `StorageError` naming `what` and `path`, or None when the statement itself
    was at fault."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in STORAGE_CODES:
        return None
    reason = str(e)
    if code & 0xFF in _ASK_THE_OS:
        why = os_reason(Path(path))
        if why and why.lower() not in reason.lower():
            reason = f"{reason} ({why})"
    return StorageError(what, path, reason)


def writable_bytes(st: os.statvfs_result) -> int:
    """What this process may still write to the file system `st` describes: root may also use
    the blocks the file system keeps for root."""
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def os_reason(path: Path) -> str | None:
    """Why the file system refuses writes to `path`, in the operating system's words, or None
    when it sees no reason (then SQLite's message is all there is)."""
    try:
        st = os.statvfs(path.parent)
    except OSError as e:
        return e.strerror
    if st.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if writable_bytes(st) == 0:
        return os.strerror(errno.ENOSPC)
    for p, mode in ((path, os.R_OK | os.W_OK), (path.parent, os.W_OK | os.X_OK)):
        if p.exists() and not os.access(p, mode):
            return os.strerror(errno.EACCES)
    return None


class _Connection(sqlite3.Connection):
    """A connection whose storage failures are `StorageError`s naming its file."""

    what: str = "database"
    path: str = ""

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _Cursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        return self.cursor().executescript(script)

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.Error as e:
            raise self._failed(e) from None

    def _failed(self, e: sqlite3.Error) -> Exception:
        err = storage_error(self.what, self.path, e)
        if err is None:
            return e
        if self.in_transaction:   # abandoned: the next BEGIN must work
            try:
                super().execute("ROLLBACK")
            except sqlite3.Error:
                pass
        return err


class _Cursor(sqlite3.Cursor):
    connection: _Connection

    def _guarded(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except sqlite3.Error as e:
            raise self.connection._failed(e) from None

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self._guarded(super().execute, sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> _Cursor:
        return self._guarded(super().executemany, sql, parameters)

    def executescript(self, script: str, /) -> _Cursor:
        return self._guarded(super().executescript, script)

    def fetchone(self) -> Any:
        return self._guarded(super().fetchone)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._guarded(super().fetchmany, self.arraysize if size is None else size)

    def fetchall(self) -> list[Any]:
        return self._guarded(super().fetchall)

    def __next__(self) -> Any:
        return self._guarded(super().__next__)


def open_db(path: str | Path, *, synchronous: Literal["NORMAL", "FULL"], schema: str | None = None,
            timeout_s: float = 30.0, what: str = "database") -> sqlite3.Connection:
    """A connection to the database at `path` (its directory is created when missing).

    `what` names the file in errors ("outbox", "node state", …). A file that cannot be
    created, opened or written, or is not a database, fails here with a `StorageError`, so
    a node refuses to start on a read-only or corrupt data directory with one line naming the
    file, instead of failing at its first write.

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise StorageError(what, path, f"cannot create {e.filename or path.parent}: "
                                       f"{e.strerror or e}") from None
    _private(path)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout_s,
                             factory=_Connection)
    except sqlite3.Error as e:
        raise storage_error(what, path, e) or e from None
    db.what, db.path = what, str(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        if schema:
            db.executescript(schema)
        # a connection SQLite could only open read-only fails at its first write, later:
        # take the write lock once now, so that a read-only file is refused at start
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except BaseException:
        db.close()
        raise
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


class Checkpointer:
    """WAL checkpoints of one database on a thread of their own, never in a commit.

    SQLite checkpoints a WAL database from inside the commit that makes the log pass 1,000
    pages: that commit copies the pages into the database file and, under ``synchronous=
    NORMAL``, waits for an fsync of both files — milliseconds, on whatever thread committed.
    A store that commits on the event loop (the outbox's small group commits) stalled every
    route for that long a few times a second under load. Here automatic checkpoints are off
    and every `every` commits (`committed`) a PASSIVE checkpoint runs on a short-lived
    thread, on a connection of its own: it never waits for the writer, which goes on
    appending to the log meanwhile; the next commit after a complete checkpoint starts the
    log from its beginning again. A checkpoint that fails (a full disk) is logged once per
    run of failures and tried again later; the log grows meanwhile, as it would have anyway.
    """

    def __init__(self, db: sqlite3.Connection, *, every: int = 200):
        self.path: str | None = getattr(db, "path", None)
        self.every = every
        self._since = 0
        self._lock = threading.Lock()   # one checkpoint at a time; held while it runs
        self._conn: sqlite3.Connection | None = None
        self._failing = False
        self._closed = False
        #: checkpoints run, for tests and benchmarks
        self.runs = 0
        db.execute("PRAGMA wal_autocheckpoint=0")

    def committed(self, n: int = 1) -> None:
        """`n` more transactions were committed; start a checkpoint when one is due."""
        self._since += n
        if self._since < self.every or self._closed or self.path is None:
            return
        if not self._lock.acquire(blocking=False):
            return   # one is running; the next commit asks again
        self._since = 0
        threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True).start()

    def _run(self) -> None:
        try:
            if self._closed:
                return
            if self._conn is None:
                assert self.path is not None   # `committed` starts none without a path
                self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                             timeout=0)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.runs += 1
            self._failing = False
        except sqlite3.Error as e:
            if not self._failing:
                log.warning("checkpoint of %s failed (tried again later): %s", self.path, e)
            self._failing = True
        finally:
            self._lock.release()

    def close(self) -> None:
        """Wait for a running checkpoint and close its connection (before the database's
        own connection closes: the last one to close checkpoints the log)."""
        self._closed = True
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken up front (``BEGIN IMMEDIATE``) so concurrent writers queue
    for it instead of failing halfway when a read lock cannot be upgraded; rolled back when the
    block raises. The caller holds whatever lock guards `db` between threads."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:   # a storage error rolled it back already
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
