"""Gathered reads: a busy connection's packets wait in the kernel for up to a millisecond, so
that the process wakes once for several of them instead of once for each.

At a few thousand messages a second every message arrives alone, and a Python process woken
for each pays ~40 µs of CPU per message before it has done anything with it (the wake-up,
the selector, the `recv`; docs/benchmarks.md, "the floor"). Pausing the reads with a timer
was tried first: asyncio's timers round up to whole milliseconds, and a paused connection
also held back every acknowledgement it carried. This asks the kernel instead.

How: `SO_RCVLOWAT`. While a connection gathers, its receive low-water mark is set to about
`target` packets' worth of bytes, and epoll reports the socket readable only once that much
is waiting — the reads in between never wake the process. A timer bounds the wait: `window`
after the mark was raised it lowers it to one byte, and Linux then reports at once whatever
has arrived (`tcp_set_rcvlowat` wakes the waiter itself). The connection gathers while
messages keep coming close together: it starts when a read of messages follows the last
within half a window, and stops when nothing came for a window after the mark came down, or
when a cycle's reads never brought two messages at once (then it passes up ever more chances
before it tries again). So a quiet connection — or one that only carries the replies to its
own requests, or a peer that waits for each answer — is read the moment a byte arrives, as
before. A connection that closes or fails is reported at once whatever the mark.

The cost is latency: a message may wait up to `window` (rounded up to asyncio's millisecond,
so ~1–2 ms with the default) before it is read, which the route's own linger mostly spends
anyway. Linux only; elsewhere `ReadGathering.of` gives None and reads are as before.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable

from .bus_interface import BusStats

#: how many packets' worth of bytes the mark asks for: a little more than a route lane's
#: batch (`pipeline.route.LINGER_ENOUGH`, 14), so that at high rates the mark, not the timer,
#: ends a wait
TARGET_PACKETS = 16
#: the mark never asks for more than this (a few large messages are read as they come)
MAX_MARK = 64 * 1024
#: after this many fruitless cycles in a row, gathering is tried again only every 64th chance
MAX_FRUITLESS = 7
#: how much of the last reads' packet sizes the running average keeps
_KEEP = 0.875


#: a connection's phases: reading each byte as it comes; the mark raised; the timer has
#: lowered the mark and the next read takes what waited; the read after that
_IDLE, _RAISED, _OPEN, _RELEASE = range(4)


class ReadGathering:
    """The low-water mark of one connection's socket and the timer that lowers it again.

    The connection calls `read(...)` after handling each `recv`; everything else follows from
    that. A gathering cycle raises the mark, lets the timer lower it, reads what waited, and
    reads once more with the mark still low before raising it again: a broker that leaves
    Nagle's algorithm on (mosquitto's default) holds its next messages until the previous
    ones are acknowledged, which the kernel does only when the process reads them, and sends
    them as one segment right after that read; taking that segment at once keeps a
    message's wait to one window rather than two."""

    __slots__ = ("sock", "loop", "window", "stats", "target", "clock", "phase", "mark", "cycle",
                 "best", "fruitless", "skip", "avg_size", "last_read", "lowered_at", "timer")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, window: float, stats: BusStats,
                 target: int = TARGET_PACKETS, clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        #: counts the cycles and the messages they read (`gathers`, `gathered`)
        self.stats = stats
        self.loop = loop
        self.window = window
        self.target = target
        self.clock = clock
        self.phase = _IDLE
        #: the socket's mark now, in bytes (1: every byte wakes the process)
        self.mark = 1
        #: messages read since the mark was last raised, and the most in one read
        self.cycle = self.best = 0
        #: cycles in a row in which every message came alone, and how many chances to start
        #: gathering are passed up because of them (2ⁿ⁻¹ − 1 after n such cycles)
        self.fruitless = self.skip = 0
        #: the running average size of a packet read, in bytes
        self.avg_size = 0.0
        self.last_read = -1.0
        #: when the timer last lowered the mark
        self.lowered_at = 0.0
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, transport: asyncio.BaseTransport, window: float, stats: BusStats) -> ReadGathering | None:
        """Gathering for a connected transport, or None where it cannot work (not Linux,
        not a TCP socket, `window` 0)."""
        if window <= 0 or not sys.platform.startswith("linux") or not hasattr(socket, "SO_RCVLOWAT"):
            return None
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(sock, asyncio.get_running_loop(), window, stats)

    @property
    def gathering(self) -> bool:
        return self.phase != _IDLE

    def read(self, messages: int, nbytes: int, packets: int, now: float) -> None:
        """After a read at `now` (monotonic) that brought `packets` packets in `nbytes`
        bytes, `messages` of them messages from the peer rather than replies to our own."""
        if packets:
            size = nbytes / packets
            self.avg_size = self.avg_size * _KEEP + size * (1 - _KEEP) if self.avg_size else size
        phase = self.phase
        if phase != _IDLE:
            self.cycle += messages
            if messages > self.best:
                self.best = messages
            if phase == _OPEN or phase == _RELEASE:
                self._after_window(phase, now)
        elif messages and 0 <= now - self.last_read < self.window / 2:
            if self.skip:
                self.skip -= 1
            else:
                self._raise()
        if messages:
            self.last_read = now

    def _after_window(self, phase: int, now: float) -> None:
        """A read after the timer lowered the mark: the first takes what waited, the second
        what the peer sent on seeing it; then the cycle is judged. A cycle whose reads held
        several messages at once counts as gathered however it ends: a loop busy with the
        first read may come to the second after the window."""
        late = now - self.lowered_at > self.window
        if phase == _OPEN and not late:
            self.phase = _RELEASE
            return
        fruitful = self.best >= 2   # the kernel held several at once: worth it
        if fruitful or not late:
            self.stats.gathers += 1
            self.stats.gathered += self.cycle
        if late:
            self._stop()   # nothing for a window after the mark came down: traffic stopped
        elif fruitful:
            self.fruitless = 0
            self._raise()
        else:                # each came alone: a peer that waits for our answers
            self.fruitless = min(self.fruitless + 1, MAX_FRUITLESS)
            self.skip = (1 << (self.fruitless - 1)) - 1   # one alone is forgiven
            self._stop()

    def _raise(self) -> None:
        self._set(min(MAX_MARK, max(2, int(self.avg_size * self.target))))
        self.phase, self.cycle, self.best = _RAISED, 0, 0
        if self.timer is None:
            self.timer = self.loop.call_later(self.window, self._lower)

    def _lower(self) -> None:
        """The window is over: whatever has arrived is read now."""
        self.timer = None
        self.phase, self.lowered_at = _OPEN, self.clock()
        self._set(1)

    def _stop(self) -> None:
        self.close()
        self._set(1)

    def _set(self, mark: int) -> None:
        if mark != self.mark:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            except OSError:   # the socket is closing; its connection_lost follows
                return
            self.mark = mark

    def close(self) -> None:
        """Back to reading every byte as it comes, with no timer left (the connection is
        gone, or `_stop` lowers the mark next)."""
        self.phase = _IDLE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
