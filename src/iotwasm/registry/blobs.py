"""The blob directory: module binaries in files named by their own sha256.

Split from `store` (the index and the operations on it); this is the part that touches files,
and it keeps the promises the store makes about them on its own: a blob appears under its real
name only whole (written to a temporary file, fsynced, renamed), read-only to the store's user,
and is checked against its digest whenever it is read. The store calls these inside its write
transaction, which is what makes them safe against writers in other processes.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from ..engine.module import digest_of
from ..errors import InvalidModule, ModuleNotFound, StorageError

HEX = re.compile(r"[0-9a-f]+")

_TMP_PREFIX = ".tmp-"
#: blobs are read-only, and only to the user the store belongs to
BLOB_MODE = 0o400


def blob_path(blob_dir: Path, digest: str) -> Path:
    """Where the blob of `digest` ("sha256:<hex>") lives: the hex part is the file's name."""
    return blob_dir / digest.split(":", 1)[1]


def store_blob(blob_dir: Path, digest: str, wasm: bytes) -> None:
    """Make the blob of `digest` hold `wasm`: kept when it is already there and intact,
    (re)written whole otherwise, so a damaged copy is repaired by adding the module again."""
    path = blob_path(blob_dir, digest)
    try:
        if digest_of(path.read_bytes()) == digest:
            return  # already there and intact
    except FileNotFoundError:
        pass
    # missing, or corrupt: (re)write it; the rename replaces a damaged copy atomically
    try:
        fd, tmp = tempfile.mkstemp(dir=blob_dir, prefix=_TMP_PREFIX)
    except OSError as e:   # a full disk or a read-only directory: one line naming it
        raise StorageError("module registry", blob_dir, e.strerror or str(e)) from None
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
    _fsync_dir(blob_dir)


def missing_blob(blob_dir: Path, digest: str) -> ModuleNotFound:
    """The error for a blob the index lists but the blob directory no longer holds."""
    return ModuleNotFound(f"blob of {digest} is missing from {blob_dir} "
                          "(the index lists it; add the module again)")


def read_verified(blob_dir: Path, digest: str) -> bytes:
    """The blob's bytes, refused when they no longer hash to `digest`."""
    path = blob_path(blob_dir, digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise missing_blob(blob_dir, digest) from None
    if digest_of(data) != digest:
        raise InvalidModule(f"blob {path} does not match its digest {digest} (corrupted or "
                            "modified on disk; add the module again to repair it)")
    return data


def remove_blob(blob_dir: Path, digest: str) -> None:
    """Delete the blob of `digest`; one already gone is no error."""
    _unlink(blob_path(blob_dir, digest))


def remove_orphans(blob_dir: Path, known: set[str]) -> int:
    """Delete the blobs whose hex digest is not in `known`, and temporary files; return how
    many. The caller holds the index's write lock."""
    removed = 0
    for entry in blob_dir.iterdir():
        name = entry.name
        # while we hold the write lock no add() is mid-write, so any temp file is stale
        orphan = (name.startswith(_TMP_PREFIX)
                  or (len(name) == 64 and HEX.fullmatch(name) and name not in known))
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
