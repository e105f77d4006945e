"""The node's data directory is private to the user the node runs as.

It holds tokens' hashes, the audit log, kv data, dead letters with their payloads, manifests
with their (secret) config and env values, and the modules themselves: directories are 0700,
files 0600, module blobs 0400 (read-only: their name is their content's digest). New files get
these modes where they are made (`sqlite.open_db`, the module store, the compile cache's
temporary files, and `iotwasm up` runs with umask 077); `secure_data_dir` also tightens
whatever an older version, a copy or a restore left looser, at every start.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

from ..errors import StorageError
from .reserve import RESERVE_NAME, DiskReserve

log = logging.getLogger("iotwasm.node")

DIR_MODE = 0o700


def secure_data_dir(root: Path) -> int:
    """Create `root` (0700) when missing, and take group and other access away from everything
    under it; returns how many modes were changed. Only those bits are removed (the owner's stay
    as they were), and symbolic links are left alone, never followed: the directory is the
    node's, what a link points to may not be."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    changed = _tighten(root)
    for parent, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            changed += _tighten(Path(parent) / name)
    if changed:
        log.info("data directory %s: took group and other access away from %d path(s)", root, changed)
    return changed


def _tighten(path: Path) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0  # removed meanwhile (a temporary file)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not mode & 0o077:
        return 0
    os.chmod(path, mode & ~0o077)
    return 1


def stranded_outboxes(root: Path, workers: int) -> list[tuple[Path, int]]:
    """Outbox files under `root` that a node run with `workers` worker processes (1: no
    `--workers`) would never send from, with the messages they still hold.

    A node with N workers keeps an outbox per worker (`workers/<k>/outbox.db`); one without
    keeps `outbox.db`. Changing N (or going to or from workers) while one of the others still
    holds messages would strand them: the node refuses to start then (see `iotwasm up`)."""
    root = Path(root)
    candidates = [root / "outbox.db"] if workers > 1 else []
    wdir = root / "workers"
    if wdir.is_dir():
        for d in wdir.iterdir():
            if d.name.isdigit() and (workers == 1 or int(d.name) >= workers):
                candidates.append(d / "outbox.db")
    out = []
    for path in sorted(candidates):
        if path.exists() and (n := _held(path, root)):
            out.append((path, n))
    return out


def _held(path: Path, root: Path) -> int:
    """The messages an outbox holds, read without writing a row. Opening it still creates its
    WAL index: when that fails on a full disk, the disk reserves of `root` and of its workers
    are released one at a time (as each node's own start would release its own) until it
    opens; a start with nothing to open leaves every reserve where it is."""
    reserves: list[DiskReserve] | None = None
    while True:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                n: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
                return n
            finally:
                db.close()
        except sqlite3.Error as e:
            if reserves is None:
                reserves = [DiskReserve(d) for d in (root, *sorted((root / "workers").glob("[0-9]*")))
                            if (d / RESERVE_NAME).exists()]
            if not any(r.release_if_full() for r in reserves):  # the first that frees room
                raise StorageError("outbox", path, str(e)) from None
