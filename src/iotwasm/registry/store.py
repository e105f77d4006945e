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
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..engine.limits import Limits
from ..engine.module import ExportInfo, ImportInfo, ModuleInfo, ModuleSource, digest_of, read_source
from ..engine.runtime import Runtime
from ..errors import ConfigError, InvalidModule, ModuleNotFound, StorageError
from ..sqlite import open_db, write_transaction

#: digest prefixes shorter than this are refused: with few hex characters a prefix that is
#: unique today can become ambiguous tomorrow, and a deployment would suddenly break
MIN_PREFIX = 12

#: bumped when the index schema changes incompatibly
SCHEMA_VERSION = 1

_HEX = re.compile(r"[0-9a-f]+")
# Names may contain '/' (vendor/filter) but never ':', which separates the version.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
# Relaxed semantic versions: an optional 'v', one to three numeric parts (missing ones are 0),
# an optional pre-release and optional build metadata.
_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?")

_TMP_PREFIX = ".tmp-"
#: blobs are read-only, and only to the user the store belongs to
BLOB_MODE = 0o400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS modules (
    digest    TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    abi       TEXT NOT NULL,
    name      TEXT NOT NULL,
    added_at  REAL NOT NULL,
    info_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    digest     TEXT NOT NULL REFERENCES modules(digest),
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS tags_by_digest ON tags(digest);
"""


@dataclass(frozen=True)
class ModuleRecord:
    """What the store knows about one module (one digest)."""

    digest: str
    size: int
    abi: str
    #: the name given when the module was first added (or the file's stem)
    name: str
    #: seconds since the epoch when the module was first added
    added_at: float
    #: every "name:version" that points at this digest, in version order
    tags: tuple[str, ...]
    #: the inspection result recorded at add time (ABI, imports, exports, memory, problems)
    info: ModuleInfo

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[1][:12]


def name_namespace(name: str) -> str:
    """The namespace a module name belongs to: `acme` for `acme/filter`, "" (the node's own)
    for `filter`. Names are scoped like this so that who may publish under a name follows from
    the name itself (the API lets a tenant publish under its own namespace only)."""
    head, sep, _ = name.partition("/")
    return head if sep else ""


def version_key(version: str) -> tuple:
    """Sort key for versions: semantic versions first, in semver precedence, then the rest.

    Pre-releases come before their release (1.0.0-rc.1 < 1.0.0); numeric pre-release parts
    compare as numbers. Strings that are not semantic versions ("dev", "nightly") sort after
    every semantic version, lexicographically among themselves. Equal precedence ("1.2" and
    "1.2.0", or differing build metadata) is broken by the raw string so the order is total.
    """
    m = _SEMVER.fullmatch(version)
    if m is None:
        return (1, version)
    core = tuple(int(p or 0) for p in m.group(1, 2, 3))
    pre = m.group(4)
    if pre is None:
        pre_key: tuple = (1,)  # a release sorts after all of its pre-releases
    else:
        pre_key = (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (0, core, pre_key, version)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"invalid module name {name!r} (letters, digits, '.', '_', '-', '/'; "
                          "must start with a letter or digit; no ':')")
    if name == "sha256":
        raise ConfigError("'sha256' cannot be a module name: 'sha256:...' refers to a digest")


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ConfigError(f"invalid version {version!r} (letters, digits, '.', '_', '-', '+'; "
                          "must start with a letter or digit)")
    if version == "latest":
        raise ConfigError("'latest' cannot be a version: name:latest always means the highest "
                          "version of name")


def _info_to_json(info: ModuleInfo) -> str:
    return json.dumps(dataclasses.asdict(info), sort_keys=True)


def _info_from_json(text: str) -> ModuleInfo | None:
    """Rebuild ModuleInfo from the index; None when the stored shape no longer fits."""
    try:
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(ModuleInfo)}
        d = {k: v for k, v in d.items() if k in known}
        d["imports"] = tuple(ImportInfo(**i) for i in d.get("imports", ()))
        d["exports"] = tuple(ExportInfo(**e) for e in d.get("exports", ()))
        d["problems"] = tuple(d.get("problems", ()))
        return ModuleInfo(**d)
    except (ValueError, TypeError, AttributeError):
        return None


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
                found = self._db.execute("PRAGMA user_version").fetchone()[0]
                if found > SCHEMA_VERSION:
                    raise ConfigError(f"index schema version {found} is newer than this iotwasm "
                                      f"understands ({SCHEMA_VERSION})", module=str(self.root))
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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
        return self.blob_dir / digest.split(":", 1)[1]

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
            _check_name(name)
            _check_version(version)
        elif name is not None:
            _check_name(name)
        mod_name, wasm = read_source(source, name)
        # compiling is the validation: whatever wasmtime refuses raises InvalidModule here,
        # before anything touches the disk
        info = self._runtime_for_validation().load_bytes(mod_name, wasm, Limits()).info
        digest = digest_of(wasm)
        with self._write() as db:
            if version is not None and name is not None:
                self._check_retag(db, name, version, digest, force)
            self._store_blob(digest, wasm)
            db.execute("INSERT OR IGNORE INTO modules(digest, size, abi, name, added_at, info_json)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       (digest, len(wasm), info.abi, mod_name, time.time(), _info_to_json(info)))
            if version is not None and name is not None:
                self._set_tag(db, name, version, digest)
        return self.get(digest)

    def _store_blob(self, digest: str, wasm: bytes) -> None:
        path = self.blob_path(digest)
        try:
            if digest_of(path.read_bytes()) == digest:
                return  # already there and intact
        except FileNotFoundError:
            pass
        # missing, or corrupt: (re)write it; the rename replaces a damaged copy atomically
        try:
            fd, tmp = tempfile.mkstemp(dir=self.blob_dir, prefix=_TMP_PREFIX)
        except OSError as e:   # a full disk or a read-only directory: one line naming it
            raise StorageError("module registry", self.blob_dir, e.strerror or str(e)) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(wasm)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, BLOB_MODE)
            if path.exists():
                _make_writable(path)  # Windows cannot replace a read-only file
            os.replace(tmp, path)
        except BaseException as e:
            _unlink(Path(tmp))
            if isinstance(e, OSError):
                raise StorageError("module registry", path, e.strerror or str(e)) from None
            raise
        _fsync_dir(self.blob_dir)

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
        _check_name(name)
        _check_version(version)
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
        rows = self._query("SELECT version FROM tags WHERE name=?", (name,))
        return sorted((r[0] for r in rows), key=version_key)

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
        if not isinstance(ref, str) or not ref:
            raise ModuleNotFound(f"empty or invalid module reference {ref!r}")
        if ref.startswith("sha256:"):
            return self._by_prefix(ref, ref[len("sha256:"):])
        if ":" in ref:
            name, version = ref.split(":", 1)
            if version == "latest":
                return self._latest(ref, name)
            row = self._db.execute("SELECT digest FROM tags WHERE name=? AND version=?",
                                   (name, version)).fetchone()
            if row is None:
                have = self._versions_locked(name)
                hint = f" ({name} has {', '.join(have)})" if have else ""
                raise ModuleNotFound(f"no module {ref!r} in the module store{hint}")
            return row[0]
        lowered = ref.lower()
        if len(ref) >= MIN_PREFIX and _HEX.fullmatch(lowered):
            named = bool(self._versions_locked(ref))
            matches = self._prefix_matches(lowered)
            if named and matches:
                raise ModuleNotFound(f"module reference {ref!r} is ambiguous: it is both a name "
                                     "and a digest prefix (write sha256:<hex> or name:latest)")
            if not named:
                return self._by_prefix(ref, lowered, matches)
        return self._latest(ref, ref)

    def _prefix_matches(self, hexpart: str) -> list[str]:
        # GLOB is case-sensitive and the prefix is plain hex, so no escaping is needed
        rows = self._db.execute("SELECT digest FROM modules WHERE digest GLOB ? LIMIT 2",
                                (f"sha256:{hexpart}*",)).fetchall()
        return [r[0] for r in rows]

    def _by_prefix(self, ref: str, hexpart: str, matches: list[str] | None = None) -> str:
        hexpart = hexpart.lower()
        if not _HEX.fullmatch(hexpart) or len(hexpart) > 64:
            raise ModuleNotFound(f"module reference {ref!r} is not a valid sha256 digest")
        if len(hexpart) < MIN_PREFIX:
            raise ModuleNotFound(f"digest prefix {ref!r} is too short (need at least "
                                 f"{MIN_PREFIX} hex characters)")
        if matches is None:
            matches = self._prefix_matches(hexpart)
        if not matches:
            raise ModuleNotFound(f"no module {ref!r} in the module store")
        if len(matches) > 1:
            raise ModuleNotFound(f"digest prefix {ref!r} is ambiguous: it matches several "
                                 "modules (give more characters)")
        return matches[0]

    def _versions_locked(self, name: str) -> list[str]:
        rows = self._db.execute("SELECT version FROM tags WHERE name=?", (name,)).fetchall()
        return sorted((r[0] for r in rows), key=version_key)

    def _latest(self, ref: str, name: str) -> str:
        rows = self._db.execute("SELECT version, digest FROM tags WHERE name=?",
                                (name,)).fetchall()
        if not rows:
            raise ModuleNotFound(f"no module {ref!r} in the module store")
        return max(rows, key=lambda r: version_key(r[0]))[1]

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
        info = _info_from_json(info_json)
        if info is None:
            # recorded by an iotwasm whose ModuleInfo had another shape: inspect again
            info = self._runtime_for_validation().load_bytes(name, self._read_verified(digest),
                                                             Limits()).info
        ordered = sorted(tags, key=lambda t: (t[0], version_key(t[1])))
        return ModuleRecord(digest, size, abi, name, added_at,
                            tuple(f"{n}:{v}" for n, v in ordered), info)

    def path(self, ref: str) -> Path:
        """Where the module's blob lives (read-only; use `read` to get verified bytes)."""
        digest = self.resolve(ref)
        path = self.blob_path(digest)
        if not path.exists():
            raise ModuleNotFound(f"blob of {digest} is missing from {self.blob_dir} "
                                 "(the index lists it; add the module again)")
        return path

    def read(self, ref: str) -> bytes:
        """The module's bytes, checked against the digest on every read.

        A blob changed on disk (bit rot, an edit, a partial copy) raises InvalidModule instead
        of running something other than what the digest promises.
        """
        return self._read_verified(self.resolve(ref))

    def _read_verified(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModuleNotFound(f"blob of {digest} is missing from {self.blob_dir} "
                                 "(the index lists it; add the module again)") from None
        if digest_of(data) != digest:
            raise InvalidModule(f"blob {path} does not match its digest {digest} (corrupted or "
                                "modified on disk; add the module again to repair it)")
        return data

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
            _unlink(self.blob_path(digest))
        return record

    def gc(self) -> int:
        """Delete blobs the index does not know (and stale temporary files); return how many.

        These are left by a crash between writing a blob and committing its row. Untagged
        modules are kept: they are still addressable by digest.
        """
        removed = 0
        with self._write() as db:
            known = {r[0].split(":", 1)[1] for r in db.execute("SELECT digest FROM modules")}
            for entry in self.blob_dir.iterdir():
                name = entry.name
                # while we hold the write lock no add() is mid-write, so any temp file is stale
                orphan = (name.startswith(_TMP_PREFIX)
                          or (len(name) == 64 and _HEX.fullmatch(name) and name not in known))
                if orphan and entry.is_file():
                    _unlink(entry)
                    removed += 1
        return removed


def _make_writable(path: Path) -> None:
    try:
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
    except OSError:
        pass


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except PermissionError:
        _make_writable(path)  # read-only files cannot be deleted on Windows
        path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
