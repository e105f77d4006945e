"""Notice manifest changes at once: Linux inotify on the manifest directory, read by the loop.

The node re-reads its manifests when their stamp (names, mtimes, sizes) changes, and checks the
stamp every `sync_interval_s`. On its own that makes a hot update from a file wait for the next
check (up to a second by default). With a watch, a write, rename, create or delete in the
directory wakes the node's loop straight away; the periodic check stays as the fallback (other
systems, network file systems that do not report changes, a watch limit reached).

inotify is called through ctypes (libc), so there is nothing to install; where it is not
available, `ManifestWatch.start` returns False and the node simply keeps polling.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("iotwasm.node.watch")

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x002, 0x004, 0x008
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x040, 0x080, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 (present on Linux only)
        return libc
    except (OSError, AttributeError):
        return None


class ManifestWatch:
    """Sets `changed` whenever something in the watched directory changes."""

    def __init__(self, path: Path, changed: asyncio.Event):
        self.dir = path if path.is_dir() else path.parent
        self.changed = changed
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Watch the directory; False (and the node polls) when inotify cannot be used here."""
        libc = _libc()
        if libc is None:
            return False
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.info("manifest watch unavailable (%s); polling", os.strerror(ctypes.get_errno()))
            return False
        if libc.inotify_add_watch(fd, os.fsencode(str(self.dir)), MASK) < 0:
            log.info("cannot watch %s (%s); polling", self.dir, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return False
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        return True

    def _readable(self) -> None:
        try:
            while os.read(self._fd, 64 * 1024):   # the events themselves do not matter: drain
                pass
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno != errno.EAGAIN:
                log.warning("manifest watch failed (%s); polling", e)
                self.stop()
        self.changed.set()

    def stop(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None
