"""A local, content-addressed store of wasm modules with immutable `name:version` tags.

Layout under the store's root:

    root/blobs/sha256/<hex>   module binaries, named by their own sha256, read-only to their
                              owner (0o400; directories 0o700: modules are tenants' code)
    root/index.db             SQLite index: one row per module, one row per tag

Why content addressing: a digest names exactly one sequence of bytes, so a node that was told
to run `sha256:...` runs what was reviewed, whatever happens to tags later; the same module
added twice is stored once. Tags give people readable names on top, and a published
`name:version` never silently changes meaning (re-pointing it needs `force=True`), which is
what container registries do for the same reason.

Crash safety: a blob is written to a temporary file, fsynced and renamed into place, so a
reader never sees half a module under a real name. Blob writes and index updates happen
inside one SQLite write transaction (`BEGIN IMMEDIATE`), which also serialises writers in
other processes; `gc()` takes the same lock, so it can never delete the blob of an `add()`
that has not committed its row yet. A crash between writing a blob and committing its row
leaves only an orphan blob, which `gc()` removes.

The pieces stand in their own modules, which this one re-exports: the index's schema and
`ModuleRecord` (`index`), the blob files (`blobs`), names and the order of versions
(`names`) and the forms of a reference (`refs`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..engine.limits import Limits
from ..engine.module import ModuleSource, digest_of, read_source
from ..engine.runtime import Runtime
from ..errors import ConfigError, ModuleNotFound
from ..sqlite import open_db, write_transaction
from . import blobs
from .blobs import BLOB_MODE
from .index import SCHEMA_VERSION, ModuleRecord, info_from_json, info_to_json, create_schema
from .names import check_name, check_version, name_namespace, version_key
from .refs import MIN_PREFIX, resolve_ref, tag_versions

__all__ = ["BLOB_MODE", "MIN_PREFIX", "SCHEMA_VERSION", "ModuleRecord", "ModuleStore",
           "name_namespace", "version_key"]


class ModuleStore:
    """A directory of module blobs plus a SQLite index of modules and tags.

    Safe to share between threads (one connection guarded by a lock) and between processes
    (SQLite's write lock plus atomic renames). Modules are validated by compiling them with
    `runtime` (a private Runtime is created on first need when none is given), so nothing that
    wasmtime would refuse ever enters the store, and a shared runtime keeps the compiled code.
    """

    def __init__(self, root: str | os.PathLike, runtime: Runtime | None = None):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.root / "blobs", self.blob_dir):  # mkdir(parents=True) ignores the mode
            d.mkdir(exist_ok=True, mode=0o700)
        self._runtime = runtime
        self._own_runtime: Runtime | None = None
        self._lock = threading.RLock()
        # WAL lets readers in other processes proceed while one process writes; NORMAL
        # sync is durable across application crashes and costs one fsync per checkpoint.
        self._db = open_db(self.root / "index.db", synchronous="NORMAL", what="module registry")
        self._closed = False
        with self._lock:
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._write():
                create_schema(self._db, self.root)

    # -- plumbing ------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of
        failing halfway when a read lock cannot be upgraded."""
        with self._open(), write_transaction(self._db) as db:
            yield db

    @contextmanager
    def _open(self) -> Iterator[None]:
        """Hold the store's lock, refusing to touch a closed connection."""
        with self._lock:
            if self._closed:
                raise ConfigError("module store is closed", module=str(self.root))
            yield

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._open():
            return self._db.execute(sql, args).fetchall()

    def _runtime_for_validation(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                # created lazily: reading the store never needs wasmtime or a ticker thread
                self._runtime = self._own_runtime = Runtime()
            return self._runtime

    def blob_path(self, digest: str) -> Path:
        return blobs.blob_path(self.blob_dir, digest)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            if self._own_runtime is not None:
                self._own_runtime.close()

    def __enter__(self) -> "ModuleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- adding --------------------------------------------------------------------------
    def add(self, source: ModuleSource, *, name: str | None = None, version: str | None = None,
            force: bool = False) -> ModuleRecord:
        """Validate and store a module (path, wasm bytes or WAT); optionally tag name:version.

        Adding the same bytes again is a no-op that returns the existing record (the first
        name given is kept). If `name:version` already points at a different digest this
        raises ConfigError and stores nothing, unless `force=True`: published versions are
        immutable so that what a deployment pinned stays what it runs.
        """
        if version is not None:
            if name is None:
                raise ConfigError(f"version {version!r} given without a name to tag")
            check_name(name)
            check_version(version)
        elif name is not None:
            check_name(name)
        mod_name, wasm = read_source(source, name)
        # compiling is the validation: whatever wasmtime refuses raises InvalidModule here,
        # before anything touches the disk
        info = self._runtime_for_validation().load_bytes(mod_name, wasm, Limits()).info
        digest = digest_of(wasm)
        with self._write() as db:
            if version is not None and name is not None:
                self._check_retag(db, name, version, digest, force)
            blobs.store_blob(self.blob_dir, digest, wasm)
            db.execute("INSERT OR IGNORE INTO modules(digest, size, abi, name, added_at, info_json)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       (digest, len(wasm), info.abi, mod_name, time.time(), info_to_json(info)))
            if version is not None and name is not None:
                self._set_tag(db, name, version, digest)
        return self.get(digest)

    # -- tags ----------------------------------------------------------------------------
    def _check_retag(self, db: sqlite3.Connection, name: str, version: str, digest: str,
                     force: bool) -> None:
        row = db.execute("SELECT digest FROM tags WHERE name=? AND version=?",
                         (name, version)).fetchone()
        if row is not None and row[0] != digest and not force:
            raise ConfigError(f"{name}:{version} already points at {row[0]}; versions are "
                              "immutable (publish a new version, or pass force=True)")

    def _set_tag(self, db: sqlite3.Connection, name: str, version: str, digest: str) -> None:
        db.execute("INSERT INTO tags(name, version, digest, created_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(name, version) DO UPDATE SET digest=excluded.digest, "
                   "created_at=excluded.created_at WHERE tags.digest != excluded.digest",
                   (name, version, digest, time.time()))

    def tag(self, ref: str, name: str, version: str, force: bool = False) -> ModuleRecord:
        """Point `name:version` at the module `ref` resolves to.

        Re-tagging to the same digest is a no-op; to a different digest it needs `force=True`.
        """
        check_name(name)
        check_version(version)
        with self._write() as db:
            digest = self._resolve(ref)
            self._check_retag(db, name, version, digest, force)
            self._set_tag(db, name, version, digest)
        return self.get(digest)

    def untag(self, name: str, version: str) -> None:
        """Remove one tag; the module itself stays (by digest) until `remove`d."""
        with self._write() as db:
            cur = db.execute("DELETE FROM tags WHERE name=? AND version=?", (name, version))
            if cur.rowcount == 0:
                raise ModuleNotFound(f"no tag {name}:{version} in the module store")

    def versions(self, name: str) -> list[str]:
        """Every version tagged under `name`, lowest first (see `version_key`)."""
        with self._open():
            return tag_versions(self._db, name)

    # -- resolving -----------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """Turn a reference into a full digest ("sha256:<64 hex>").

        Accepted forms: `sha256:<hex>` (full, or a unique prefix of at least 12 hex
        characters), a bare hex prefix of at least 12 characters, `name:version`, and `name`
        or `name:latest` for the highest version of name. A bare hex string that is both a
        tagged name and a digest prefix is refused as ambiguous rather than guessed.
        """
        with self._open():
            return self._resolve(ref)

    def _resolve(self, ref: str) -> str:
        return resolve_ref(self._db, ref)

    # -- reading -------------------------------------------------------------------------
    def get(self, ref: str) -> ModuleRecord:
        """The record of the module `ref` resolves to."""
        with self._open():
            digest = self._resolve(ref)
            rows = self._query("SELECT digest, size, abi, name, added_at, info_json FROM modules "
                               "WHERE digest=?", (digest,))
            tags = self._query("SELECT name, version FROM tags WHERE digest=?", (digest,))
        return self._record(rows[0], tags)

    def _record(self, row: tuple, tags: list[tuple]) -> ModuleRecord:
        digest, size, abi, name, added_at, info_json = row
        info = info_from_json(info_json)
        if info is None:
            # recorded by an iotwasm whose ModuleInfo had another shape: inspect again
            info = self._runtime_for_validation().load_bytes(
                name, blobs.read_verified(self.blob_dir, digest), Limits()).info
        ordered = sorted(tags, key=lambda t: (t[0], version_key(t[1])))
        return ModuleRecord(digest, size, abi, name, added_at,
                            tuple(f"{n}:{v}" for n, v in ordered), info)

    def path(self, ref: str) -> Path:
        """Where the module's blob lives (read-only; use `read` to get verified bytes)."""
        digest = self.resolve(ref)
        path = self.blob_path(digest)
        if not path.exists():
            raise blobs.missing_blob(self.blob_dir, digest)
        return path

    def read(self, ref: str) -> bytes:
        """The module's bytes, checked against the digest on every read.

        A blob changed on disk (bit rot, an edit, a partial copy) raises InvalidModule instead
        of running something other than what the digest promises.
        """
        return blobs.read_verified(self.blob_dir, self.resolve(ref))

    def list(self) -> list[ModuleRecord]:
        """Every module, sorted by name and then version (untagged ones after tagged)."""
        with self._lock:
            rows = self._query("SELECT digest, size, abi, name, added_at, info_json FROM modules")
            tag_rows = self._query("SELECT digest, name, version FROM tags")
        by_digest: dict[str, list[tuple]] = {}
        for digest, n, v in tag_rows:
            by_digest.setdefault(digest, []).append((n, v))
        records = [self._record(row, by_digest.get(row[0], [])) for row in rows]

        def key(rec: ModuleRecord) -> tuple:
            own = [t.split(":", 1)[1] for t in rec.tags if t.split(":", 1)[0] == rec.name]
            any_tag = own or [t.split(":", 1)[1] for t in rec.tags]
            if not any_tag:
                return (rec.name, 1, (), rec.digest)
            return (rec.name, 0, min(version_key(v) for v in any_tag), rec.digest)

        return sorted(records, key=key)

    # -- removing ------------------------------------------------------------------------
    def remove(self, ref: str, force: bool = False) -> ModuleRecord:
        """Delete a module: its tags, its index row and its blob.

        A module that still has tags is refused without `force=True`, because something may
        be deploying it by name; untag it first, or force.
        """
        with self._write() as db:
            digest = self._resolve(ref)
            record = self.get(digest)
            if record.tags and not force:
                raise ConfigError(f"{digest} is still tagged {', '.join(record.tags)}; untag it "
                                  "first or pass force=True")
            db.execute("DELETE FROM tags WHERE digest=?", (digest,))
            db.execute("DELETE FROM modules WHERE digest=?", (digest,))
            # inside the transaction, so a concurrent add of the same bytes waits for us and
            # then writes the blob again instead of ending up with a row but no blob
            blobs.remove_blob(self.blob_dir, digest)
        return record

    def gc(self) -> int:
        """Delete blobs the index does not know (and stale temporary files); return how many.

        These are left by a crash between writing a blob and committing its row. Untagged
        modules are kept: they are still addressable by digest.
        """
        with self._write() as db:
            known = {r[0].split(":", 1)[1] for r in db.execute("SELECT digest FROM modules")}
            removed = blobs.remove_orphans(self.blob_dir, known)
        return removed

