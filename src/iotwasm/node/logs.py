"""Guest logs: what modules say (host `log` calls and WASI stderr), kept per deployment.

A module is untrusted and may log in a loop, so capture is bounded three ways: a token bucket
per deployment (`rate` lines per second, bursts up to `burst`), a cap on one line's length, and
a ring of the last `keep` lines. Lines refused by the rate limit are counted, and the count is
reported in the next line that gets through, so a reader knows something was left out.
Followers (API streams) get each kept line as it arrives.

A line is the guest's text, and ends up on operators' terminals (``iotwasm logs``, the node's
own log): control characters — ESC sequences that move the cursor or retitle the window, NUL,
carriage returns that overwrite what was printed, bidirectional overrides that reorder it —
are kept as visible escapes (``\x1b``), never written raw (`printable`).
"""

from __future__ import annotations

import collections
import itertools
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}

#: characters a terminal acts on instead of showing: C0 (but tab), DEL, C1 and the bidirectional
#: controls
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """`text` with every control character written as a visible escape (``\\x1b``, ``\\u202e``);
    other text, backslashes included, is unchanged, so escaping twice changes nothing."""
    return _CONTROL.sub(_escape, text)


@dataclass(frozen=True)
class LogLine:
    seq: int
    ts: float
    deployment: str
    level: str
    text: str

    def to_dict(self) -> dict:
        return {"seq": self.seq, "ts": self.ts, "deployment": self.deployment, "level": self.level,
                "text": self.text}


class _Bucket:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.suppressed = 0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


class GuestLogs:
    def __init__(self, keep: int = 1000, rate: float = 50.0, burst: int = 200, max_line: int = 2048):
        self.keep, self.rate, self.burst, self.max_line = keep, rate, burst, max_line
        self._lines: dict[str, collections.deque[LogLine]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.followers: list[Callable[[LogLine], None]] = []
        self.suppressed_total = 0

    def add(self, deployment: str, level: int, text: str) -> bool:
        """Keep one line (called from worker threads); False when the rate limit refused it."""
        with self._lock:
            bucket = self._buckets.get(deployment)
            if bucket is None:
                bucket = self._buckets[deployment] = _Bucket(self.rate, self.burst)
            if not bucket.take():
                self.suppressed_total += 1
                return False
            text = printable(text)
            if len(text) > self.max_line:
                text = text[: self.max_line] + f"… ({len(text) - self.max_line} characters cut)"
            if bucket.suppressed:
                text = f"[{bucket.suppressed} line(s) dropped by the log rate limit] {text}"
                bucket.suppressed = 0
            line = LogLine(next(self._seq), time.time(), deployment, LEVELS.get(level, "info"), text)
            ring = self._lines.get(deployment)
            if ring is None:
                ring = self._lines[deployment] = collections.deque(maxlen=self.keep)
            ring.append(line)
            followers = list(self.followers)
        for f in followers:
            try:
                f(line)
            except Exception:
                pass  # a broken follower never stops capture
        return True

    def lines(self, deployment: str | None = None, since: int = 0, limit: int = 200) -> list[LogLine]:
        with self._lock:
            rings = [self._lines.get(deployment, ())] if deployment else list(self._lines.values())
            out = [ln for ring in rings for ln in ring if ln.seq > since]
        out.sort(key=lambda ln: ln.seq)
        return out[-limit:] if limit else out

    def forget(self, deployment: str) -> None:
        with self._lock:
            self._lines.pop(deployment, None)
            self._buckets.pop(deployment, None)
