"""A small real file system for the storage tests: a tmpfs of a few MiB mounted by the test.

The node's data directory goes on it; the test fills it to the last byte (disk full), frees
it again, or remounts it read-only. Mounting needs root (CAP_SYS_ADMIN), which the test
suite has here; without it a test fails saying so — it never skips.

Use from a test module:

    from smallfs import small_disk  # noqa: F401  (pytest fixture)

And what the storage tests share besides: `wait_for` (polls a condition in the event loop) and
`fill_to_the_last_dead_letter` (fills the disk and the slack of a node database).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from iotwasm.errors import StorageError
from iotwasm.node.state import NodeState
from waiting import wait_for as wait_for  # for the tests that wait through this module

CHUNKS = (1 << 20, 64 << 10, 4 << 10, 512)


class SmallDisk:
    """A tmpfs of `size` at `path`: fill, free, read-only, read-write, unmount."""

    def __init__(self, path: Path, size: str = "8m"):
        self.path = Path(path)
        self.size = size
        self._fillers: list[Path] = []

    def mount(self) -> SmallDisk:
        if os.geteuid() != 0:
            pytest.fail("the storage tests mount a small tmpfs (mount -t tmpfs) to fill a real disk: "
                        "run them as root (or with CAP_SYS_ADMIN)", pytrace=False)
        self.path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path))
        return self

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True, check=False).returncode != 0:
            _run("umount", "-l", str(self.path))   # a file still open somewhere: detach anyway

    def fill(self) -> int:
        """Write filler files until the file system has not one byte left; returns the bytes
        written. Every later write that needs a new block fails with ENOSPC."""
        filler = self.path / f".filler-{len(self._fillers)}"
        self._fillers.append(filler)
        written = 0
        with open(filler, "wb", buffering=0) as f:
            for chunk in CHUNKS:
                block = b"\xa5" * chunk
                while True:
                    try:
                        n = f.write(block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
                    written += n or 0
                    if not n:
                        break
        return written

    def free(self) -> None:
        """Delete the filler: the space is back."""
        for f in self._fillers:
            f.unlink(missing_ok=True)
        self._fillers.clear()

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def read_only(self) -> None:
        _run("mount", "-o", "remount,ro", str(self.path))

    def read_write(self) -> None:
        _run("mount", "-o", "remount,rw", str(self.path))


def rows(db: Path, sql: str) -> int:
    """`sql`'s one value (a count), read from `db` without writing; -1 while it cannot be read."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return -1


def truncate_wal(db: Path) -> bool:
    """Checkpoint the WAL of `db` (an outbox) into the database and cut it to zero bytes, so
    that the next write (an append, or a delete after the uplink's acknowledgement) must grow
    it: on a disk filled after this, it fails."""
    with sqlite3.connect(db, timeout=5) as c:
        busy, _, _ = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0 and Path(f"{db}-wal").stat().st_size == 0


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}", pytrace=False)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs at tmp_path/disk, unmounted after the test."""
    disk = SmallDisk(tmp_path / "disk").mount()
    try:
        yield disk
    finally:
        disk.unmount()


def fill_to_the_last_dead_letter(disk, state: NodeState) -> None:
    """Fill `disk` and the slack SQLite had in `state`'s file: a dead letter of more than
    1,000 bytes no longer fits."""
    disk.fill()
    with pytest.raises(StorageError):
        for _ in range(1000):
            state.dead_letter("", "filler", "s", "k", "e", "t", b"f" * 1000)
