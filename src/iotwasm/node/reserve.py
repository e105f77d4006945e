"""A reserve of disk space, so that a node restarted on a full disk still starts.

A running node meets a full disk by holding what it cannot store (docs/node.md,
"Store-and-forward"): nothing is acknowledged that is not kept, the broker keeps the rest.
A node *restarted* on a full disk could not start at all: opening a SQLite database in WAL
mode creates its `-shm` index even to read, and that needs blocks the disk no longer has.

So the node keeps a reserve file in its data directory (`.disk-reserve`, really allocated,
1 % of the file system, at least 1 MiB and at most 64 MiB), made at start when there is room.
A node that starts with less free space than the reserve deletes it first, logs that it did,
and starts with that room: its databases open, it reports the full disk, and holds what it
cannot store as it would have if the disk had filled while it ran. Once the file system has
room for the reserve twice over, the node makes it again (it looks at every sync). Databases
keep such a ballast for the same reason (CockroachDB's emergency ballast file).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from ..sqlite import writable_bytes

log = logging.getLogger("iotwasm.node")

RESERVE_NAME = ".disk-reserve"
MIN_RESERVE = 1 << 20
MAX_RESERVE = 64 << 20
#: of the file system's size
RESERVE_FRACTION = 0.01


class DiskReserve:
    """The reserve file of one data directory."""

    def __init__(self, root: Path, size: int | None = None):
        """`size` in bytes; by default 1 % of the file system, within 1–64 MiB."""
        self.path = Path(root) / RESERVE_NAME
        if size is None:
            st = os.statvfs(root)
            size = min(MAX_RESERVE, max(MIN_RESERVE, int(st.f_blocks * st.f_frsize * RESERVE_FRACTION)))
        self.size = size
        #: True while the node runs without its reserve (released, or not made yet)
        self.missing = True

    def free_bytes(self) -> int:
        """What the node may still write to the file system."""
        return writable_bytes(os.statvfs(self.path.parent))

    def settle(self) -> bool:
        """At start, before any database opens: release the reserve when the disk is full,
        make it when it is missing and there is room. Returns True if it was released."""
        if self.release_if_full():
            return True
        if self._present():
            self.missing = False
        else:
            self.restore()
        return False

    def _present(self) -> bool:
        """The reserve is there at its full size (one made when the file system was smaller
        is not: it is made again)."""
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def release_if_full(self) -> bool:
        """Delete the reserve when the file system has less room than it: True if it did.
        What `settle` does first; also for whoever opens a database of this directory before
        its node starts (`iotwasm up --workers` looking for stranded outboxes)."""
        if not self._present() or self.free_bytes() >= self.size:
            return False
        self.path.unlink()
        log.warning("disk full: released the %d KiB reserve (%s) to start; it is made again "
                    "once there is room", self.size >> 10, self.path)
        return True

    def restore(self) -> bool:
        """Make the reserve when the file system has room for it twice over; True if made."""
        if not self.missing:
            return False
        try:
            if self.free_bytes() < 2 * self.size:
                return False
            tmp = self.path.with_name(RESERVE_NAME + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)   # real blocks: a sparse file keeps none
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            self.path.with_name(RESERVE_NAME + ".tmp").unlink(missing_ok=True)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("disk reserve %s not made: %s", self.path, e.strerror or e)
            return False
        self.missing = False
        log.info("disk reserve %s made (%d KiB)", self.path, self.size >> 10)
        return True
