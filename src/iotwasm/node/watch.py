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
import logging
import os
import struct
from pathlib import Path

from ..backoff import Backoff
from ..errors import IotwasmError
from ..supervise import supervise

log = logging.getLogger("iotwasm.node.watch")

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x002, 0x004, 0x008
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x040, 0x080, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_UNMOUNT, IN_IGNORED = 0x2000, 0x8000     # reported whether asked for or not
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF)
#: the watched directory itself went away (moved, deleted, unmounted): watch its path anew
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
_EVENT = struct.Struct("iIII")   # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 (present on Linux only)
        return libc
    except (OSError, AttributeError):
        return None


class ManifestWatch:
    """Sets `changed` whenever something in the watched directory changes.

    The watch runs as a supervised task: when reading it fails, or the directory is replaced
    (deploy tools rename a new directory over the old one, which leaves an inotify watch on
    the old one), it watches the path anew, retrying with backoff until the directory is
    there again, and wakes the node so it re-reads whatever changed meanwhile.
    """

    def __init__(self, path: Path, changed: asyncio.Event):
        self.dir = path if path.is_dir() else path.parent
        self.changed = changed
        self._libc: ctypes.CDLL | None = None
        self._fd: int | None = None          # opened by start(), taken by the first run
        self._task: asyncio.Task | None = None

    def start(self) -> bool:
        """Watch the directory; False (and the node polls) when inotify cannot be used here."""
        self._libc = _libc()
        if self._libc is None:
            return False
        try:
            self._fd = self._open()
        except OSError as e:
            log.info("manifest watch unavailable (%s); polling", e.strerror)
            return False
        self._task = supervise(f"manifest watch {self.dir}", self._run, log=log, backoff=Backoff(0.05, 5.0))
        return True

    def _open(self) -> int:
        libc = self._libc
        assert libc is not None  # start() loaded it before opening
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if libc.inotify_add_watch(fd, os.fsencode(str(self.dir)), MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"cannot watch {self.dir}: {os.strerror(err)}")
        return fd

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            fd, self._fd = self._fd, None
            if fd is None:
                try:
                    fd = self._open()
                except OSError as e:    # not there (yet): the supervisor tries again later
                    raise IotwasmError(f"manifest watch: {e.strerror}") from None
                self.changed.set()      # look at what happened while nothing watched
            readable = asyncio.Event()
            loop.add_reader(fd, readable.set)
            try:
                while True:
                    await readable.wait()
                    readable.clear()
                    gone = self._drain(fd)
                    self.changed.set()
                    if gone:
                        log.info("manifest directory %s was replaced or removed; watching its path anew", self.dir)
                        break
            finally:
                loop.remove_reader(fd)
                os.close(fd)

    @staticmethod
    def _drain(fd: int) -> bool:
        """Read every pending event; True when the watched directory itself went away."""
        gone = False
        while True:
            try:
                data = os.read(fd, 64 * 1024)
            except BlockingIOError:
                return gone
            if not data:
                return gone
            at = 0
            while at + _EVENT.size <= len(data):
                _wd, mask, _cookie, n = _EVENT.unpack_from(data, at)
                gone = gone or bool(mask & GONE)
                at += _EVENT.size + n

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()     # the run closes its descriptor
            self._task = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
