"""Ports for the servers tests start, reserved across every test process on the machine.

A port the kernel picks (bind to 0, close) is free only at that instant: the broker started a
moment later can find it taken by another test process's pick (a parallel worker, or a second
test run) or by an outgoing connection's ephemeral port. So ports here:

- come from 15000-32767, below Linux's ephemeral range (32768-60999): no outgoing connection
  is ever given one;
- are reserved with an flock on `<tmp>/iotwasm-test-ports/<port>`, held until this process
  exits (the kernel drops it even after kill -9): no other test process hands out the same one;
- are checked free (TCP and UDP) when handed out, and never handed out twice by one process
  until it has gone through the whole range (then the longest-held are reused first).
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

LOW, HIGH = 15000, 32768
_DIR = Path(tempfile.gettempdir()) / "iotwasm-test-ports"
_lock = threading.Lock()
#: port -> fd holding its reservation, oldest first
_held: OrderedDict[int, int] = OrderedDict()
_cursor = [LOW + random.Random(os.getpid()).randrange(HIGH - LOW)]


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _reserve(port: int) -> int | None:
    """The fd of the port's lock file, locked; None when another process holds it."""
    _DIR.mkdir(mode=0o777, exist_ok=True)
    fd = os.open(_DIR / str(port), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of `count` consecutive ports free on `host`, reserved for this process."""
    with _lock:
        for _ in range(2 * (HIGH - LOW)):
            base = _cursor[0]
            _cursor[0] = LOW if base + count >= HIGH else base + count
            if base + count > HIGH:
                continue
            ports = range(base, base + count)
            if any(p in _held for p in ports):
                if len(_held) < (HIGH - LOW) // 2:
                    continue  # ours and maybe still in use: take others while there are
                for p in ports:  # the range is used up: reuse our oldest
                    if p in _held:
                        os.close(_held.pop(p))
            fds = []
            for p in ports:
                fd = _reserve(p)
                if fd is None:
                    break
                fds.append(fd)
            if len(fds) == count and all(_bindable(host, p) for p in ports):
                for p, fd in zip(ports, fds):
                    _held[p] = fd
                return base
            for fd in fds:
                os.close(fd)
        raise RuntimeError(f"no {count} free port(s) in {LOW}-{HIGH - 1} on {host}")
