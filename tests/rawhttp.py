"""HTTP/1.1 over a plain socket, for requests no client library sends: an announced body far
larger than what is sent, a body streamed until the server answers, the answer read while the
body is still going out."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int            # body bytes the client had sent when the answer came

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers: dict[str, str], body: Iterable[bytes] = (),
            chunked: bool = False, wait_first: float = 0.0, timeout: float = 60.0) -> Answer:
    """Send the head, then (after waiting up to `wait_first` s for an early answer) the body's
    pieces until the answer starts to arrive; return the answer. `chunked` frames the pieces
    with Transfer-Encoding: chunked (give no Content-Length then)."""
    head = {"Host": "127.0.0.1", **headers, **({"Transfer-Encoding": "chunked"} if chunked else {})}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
                   + "\r\n").encode())
        sent = 0
        if not _readable(s, wait_first):
            for piece in body:
                if _readable(s, 0):
                    break
                try:
                    s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(piece)
        return _read_answer(s, sent)


def _readable(s: socket.socket, wait: float) -> bool:
    return bool(select.select([s], [], [], wait)[0])


def _read_answer(s: socket.socket, sent: int) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            raise ConnectionError(f"connection closed before an answer (got {data[:200]!r})")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        more = s.recv(65536)
        if not more:
            break
        rest += more
    return Answer(status, headers, rest[:length], sent)


def pieces(total: int, size: int = 1 << 20, fill: bytes = b" ") -> Iterable[bytes]:
    """`total` bytes in pieces of `size` (one piece object, sent again and again)."""
    piece = (fill * (size // len(fill) + 1))[:size]
    for _ in range(total // size):
        yield piece
