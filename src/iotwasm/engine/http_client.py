"""Outbound HTTP for guests (the `http` capability): an allow-list and a bounded client.

A module granted `http` may call URLs that match its deployment's allow-list, and nothing
else. Each pattern is ``scheme://host[:port]/path``:

- scheme ``http`` or ``https`` (no wildcard: a module never downgrades by accident);
- host exact (case-insensitive), ``*.example.com`` for any subdomain, an IP address, or ``*``;
- port a number or ``*``; omitted, the scheme's default (80 / 443);
- path a glob where ``*`` matches any run of characters, ``/`` included; omitted, ``/*``.

What is checked, in order, for the first request and for every redirect: the URL parses, has
no user info and no dot segments in its path (``/a/../admin`` would match ``/a/*`` but reach
``/admin``); it matches a pattern; its host name resolves (once: the connection goes to the
address checked, so a second answer cannot differ) to addresses that are public — a name that
resolves to a loopback, private, link-local or otherwise special address is refused unless the
pattern that matched names that address literally or the grant sets ``private_networks``. A
refusal names the URL and the allow-list.

The client is blocking on purpose: host functions run on the worker thread of the guest call,
never on the event loop. Every socket operation gets the time left of the guest call's budget
(`deadline`), so time spent waiting counts toward the module's time limit; the response body
is read at most `max_response` bytes far; redirects are followed at most `MAX_REDIRECTS` times.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import http.client
import ipaddress
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field

from ..errors import CapabilityDenied, ConfigError, IotwasmError

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
MAX_URL = 4096
#: a request's bytes (head and body) a guest may hand over
MAX_REQUEST = 1024 * 1024
#: a request without a time budget (a module with no timeout) still ends
MAX_REQUEST_S = 30.0
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: headers the host sets itself; a guest may not
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te",
                              "upgrade", "proxy-authorization", "proxy-connection"})
#: name lookups (blocking, without a timeout of their own) run here, bounded by the caller's wait
_RESOLVER = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="iotwasm-resolve")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*\.?|\[[0-9a-f:.]+\])$")


class HttpRequestFailed(IotwasmError):
    """The request went out (or tried to) and failed: unreachable, timed out, too large."""

    kind = "http"

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


#: what a guest sees instead of a body length (docs/abi.md)
ERR_FAILED, ERR_TOO_LARGE, ERR_TIMEOUT = -1, -2, -3


@dataclass(frozen=True)
class UrlPattern:
    text: str
    scheme: str
    host: str
    port: int | None   # None: any
    path: str

    @classmethod
    def parse(cls, text: str) -> "UrlPattern":
        m = re.match(r"^(https?)://([^/:]+|\[[^\]]+\])(?::(\d+|\*))?(/.*)?$", text.strip())
        if not m:
            raise ConfigError(f"http allow-list entry {text!r} is not scheme://host[:port][/path] "
                              f"with scheme http or https")
        scheme, host, port, path = m.group(1), m.group(2).lower(), m.group(3), m.group(4) or "/*"
        if not _HOST.match(host):
            raise ConfigError(f"http allow-list entry {text!r}: host {host!r} is not a name, "
                              f"*.name, an address or *")
        if port is None:
            port_n: int | None = DEFAULT_PORTS[scheme]
        elif port == "*":
            port_n = None
        else:
            port_n = int(port)
            if not 0 < port_n < 65536:
                raise ConfigError(f"http allow-list entry {text!r}: port {port_n} out of range")
        return cls(text.strip(), scheme, host.strip("[]").rstrip("."), port_n, path)

    def literal_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if scheme != self.scheme or (self.port is not None and port != self.port):
            return False
        if self.host == "*":
            pass
        elif self.host.startswith("*."):
            if not host.endswith(self.host[1:]):
                return False
        elif host != self.host:
            return False
        return fnmatch.fnmatchcase(path, self.path.replace("[", "[[]"))


@dataclass(frozen=True)
class HttpGrant:
    """What the `http` capability allows: the allow-list and the bounds of a response."""

    allow: tuple[str, ...] = ()
    max_response: int = 1024 * 1024
    private_networks: bool = False
    patterns: tuple[UrlPattern, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_response < 1:
            raise ConfigError("http maxResponse must be at least 1 byte")
        object.__setattr__(self, "patterns", tuple(UrlPattern.parse(p) for p in self.allow))

    def describe(self) -> str:
        return ", ".join(self.allow) or "(empty)"

    def check(self, url: str) -> tuple[urllib.parse.SplitResult, str, int, UrlPattern]:
        """The parsed URL, its host and port, and the pattern that allows it; else
        `CapabilityDenied` naming the URL and the allow-list."""
        def deny(why: str) -> CapabilityDenied:
            return CapabilityDenied(f"http request to {url[:200]!r} {why} (allow-list: {self.describe()})")

        if len(url) > MAX_URL:
            raise deny(f"is longer than {MAX_URL} characters")
        try:
            u = urllib.parse.urlsplit(url)
            port = u.port or DEFAULT_PORTS.get(u.scheme)
        except ValueError:
            raise deny("is not a valid URL") from None
        host = (u.hostname or "").rstrip(".")
        if u.scheme not in DEFAULT_PORTS or not host or port is None:
            raise deny("is not an absolute http or https URL")
        if u.username is not None or u.password is not None:
            raise deny("carries user info")
        if not host.isascii() or any(c in host for c in "%\\ "):
            raise deny("has a host name that is not plain ASCII")
        path = u.path or "/"
        segments = urllib.parse.unquote(path).split("/")
        if "." in segments or ".." in segments or "\\" in urllib.parse.unquote(path):
            raise deny("has dot segments in its path")
        for p in self.patterns:
            if p.matches(u.scheme, host, port, path):
                return u, host, port, p
        raise deny("is not in the allow-list")

    def resolve(self, url: str, host: str, port: int, pattern: UrlPattern,
                deadline: float | None = None) -> str:
        """The address to connect to: `host` resolved once and checked (see module doc).
        The lookup gets the time left until `deadline`: the resolver has no timeout of its
        own, so it runs on a small pool of its own and is given up on (not waited for)."""
        literal = _ip(host)
        if literal is not None:
            infos = [str(literal)]
        else:
            lookup = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            try:
                left = None if deadline is None else _left(url, deadline)
                infos = [str(ai[4][0]) for ai in lookup.result(timeout=left)]
            except concurrent.futures.TimeoutError:
                lookup.cancel()
                raise HttpRequestFailed(f"http request to {url[:200]!r}: the call's time budget ran out "
                                        f"resolving {host!r}", ERR_TIMEOUT) from None
            except (socket.gaierror, UnicodeError) as e:
                raise HttpRequestFailed(f"http request to {url[:200]!r}: cannot resolve {host!r}: {e}",
                                        ERR_FAILED) from None
        if not infos:
            raise HttpRequestFailed(f"http request to {url[:200]!r}: {host!r} has no address", ERR_FAILED)
        named = pattern.literal_ip()
        for addr in infos:
            ip = ipaddress.ip_address(addr.split("%")[0])
            if self.private_networks or (named is not None and ip == named) or ip.is_global:
                return str(ip)
        raise CapabilityDenied(
            f"http request to {url[:200]!r}: {host!r} resolves to {infos[0]}, a non-public address "
            f"no pattern names (allow-list: {self.describe()}; privateNetworks is off)")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_request(raw: bytes) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """A guest's request: ``METHOD SP URL LF *(Name: value LF) LF body`` (docs/abi.md)."""
    head, sep, body = raw.partition(b"\n\n")
    if not sep:
        head, body = raw.rstrip(b"\n"), b""
    lines = head.decode("utf-8", "replace").split("\n")
    method, _, url = lines[0].partition(" ")
    if method not in METHODS or not url:
        raise ValueError(f"request line {lines[0][:80]!r} is not 'METHOD URL' with one of "
                         f"{', '.join(sorted(METHODS))}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not _TOKEN.match(name) or "\r" in value:
            raise ValueError(f"header line {line[:80]!r} is not 'Name: value'")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the host")
        headers.append((name, value))
    return method, url.strip(), headers, body


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to an address already checked, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, addr: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._addr = addr

    def connect(self) -> None:
        self.sock = socket.create_connection((self._addr, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addr: str, timeout: float):
        self._tls = ssl.create_default_context()   # verifies the certificate against `host`
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._addr = addr

    def connect(self) -> None:
        sock = socket.create_connection((self._addr, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def request(grant: HttpGrant, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
            deadline: float | None) -> tuple[int, bytes]:
    """Make the request, following redirects inside the allow-list; (status, body).

    Raises `CapabilityDenied` for a URL (or a redirect) outside the list and
    `HttpRequestFailed` (with the code the guest sees) for everything that went wrong on the
    way. `deadline` is a `time.monotonic()` value; None means `MAX_REQUEST_S` from now."""
    if deadline is None:
        deadline = time.monotonic() + MAX_REQUEST_S
    for _ in range(MAX_REDIRECTS + 1):
        u, host, port, pattern = grant.check(url)
        addr = grant.resolve(url, host, port, pattern, deadline)
        status, location, data = _once(grant, u, host, port, addr, method, url, headers, body, deadline)
        if location is None:
            return status, data
        url = urllib.parse.urljoin(url, location)
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, body = "GET", b""
    raise HttpRequestFailed(f"http request to {url[:200]!r}: more than {MAX_REDIRECTS} redirects", ERR_FAILED)


def _left(url: str, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HttpRequestFailed(f"http request to {url[:200]!r}: the call's time budget ran out",
                                ERR_TIMEOUT)
    return left


def _once(grant: HttpGrant, u: urllib.parse.SplitResult, host: str, port: int, addr: str, method: str,
          url: str, headers: list[tuple[str, str]], body: bytes, deadline: float
          ) -> tuple[int, str | None, bytes]:
    cls = _PinnedTLS if u.scheme == "https" else _Pinned
    conn = cls(host, port, addr, _left(url, deadline))
    target = urllib.parse.urlunsplit(("", "", u.path or "/", u.query, ""))
    try:
        conn.request(method, target, body=body if body or method in ("POST", "PUT", "PATCH") else None,
                     headers=dict(headers))
        # kept: the connection lets go of its socket when the answer says it closes, but the
        # response still reads from it
        sock = conn.sock
        sock.settimeout(_left(url, deadline))
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            return resp.status, resp.getheader("Location"), b""
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > grant.max_response:
            raise HttpRequestFailed(f"http response of {url[:200]!r} declares {declared} bytes, more "
                                    f"than maxResponse {grant.max_response}", ERR_TOO_LARGE)
        chunks, size = [], 0
        while True:
            sock.settimeout(_left(url, deadline))
            chunk = resp.read1(min(65536, grant.max_response + 1 - size)) if method != "HEAD" else b""
            if not chunk:
                break
            size += len(chunk)
            if size > grant.max_response:
                raise HttpRequestFailed(f"http response of {url[:200]!r} is larger than maxResponse "
                                        f"{grant.max_response} bytes", ERR_TOO_LARGE)
            chunks.append(chunk)
        return resp.status, None, b"".join(chunks)
    except socket.timeout:
        raise HttpRequestFailed(f"http request to {url[:200]!r}: the call's time budget ran out",
                                ERR_TIMEOUT) from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise HttpRequestFailed(f"http request to {url[:200]!r} failed: {type(e).__name__}: {e}",
                                ERR_FAILED) from None
    finally:
        conn.close()
