"""The connector interface: what a route's source or sink kind is, and where kinds come from.

A *connector* is one kind of source or sink (``mqtt``, ``modbus``, ``postgres`` …). It is
described by a `Connector`: its kind and role, the pydantic model of its configuration (the
manifest schema is assembled from these models, so configuration is checked when a manifest is
read, with the field's path), a factory that makes a running instance for one route, the
packages it needs, and a paragraph stating its acknowledgement and backpressure semantics
(docs/connectors.md collects them).

Instances follow the protocols the route already speaks (`SourceConnector`, and the route's
`Sink`); every instance may also report `status()`: health and counters, shown by a route's
describe and exported as metrics.

Kinds are looked up in a `Registry`. The built-in kinds register when the package is imported;
third-party kinds come from the ``iotwasm.connectors`` entry-point group of installed
distributions (an entry point names a `Connector`, or a list of them), discovered with
`importlib.metadata` the first time a kind is not found among the built-in ones.

Libraries a connector needs are imported when a route uses it (`require`), so a node without
them still starts, and a manifest that uses the kind gets one line naming the package.

A source that runs background tasks stops them with `cancel_and_wait` before it closes its
clients.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Protocol

from pydantic import BaseModel

from ...errors import ConfigError
from ...supervise import cancel_and_wait as cancel_and_wait  # for sources and plugins

log = logging.getLogger("iotwasm.connectors")

ENTRY_POINT_GROUP = "iotwasm.connectors"

Role = Literal["source", "sink"]


class BuildContext(Protocol):
    """What the node offers a connector's factory."""

    #: the route being built
    route: str
    #: the node's store-and-forward outbox (sinks use it unless the manifest turns it off)
    outbox: Any
    #: the node's local results store
    store: Any
    #: the node's bus (mqtt://, nats://) URL, None for the in-process bus
    broker: str | None
    #: the namespace that owns the route (or rule) being built
    namespace: str
    #: a sink being built: the circuit breaker the manifest asks for (`breaker.CircuitBreaker`;
    #: None for sources, for kinds that are not uplinks, or when turned off); an uplink passes
    #: it to its outbox forwarder or checks it before each send
    breaker: Any
    #: a sink being built without an outbox: further attempts per message, and the backoff
    #: between them (`backoff.Backoff`, None without ``retry``)
    retries: int
    retry_backoff: Any

    async def bus_for(self, url: str | None) -> Any:
        """The bus at `url` (the node's own for None), connected and shared."""

    async def ingest_server(self) -> Any:
        """The node's HTTP ingest server, started on first use."""


class SourceConnector(Protocol):
    """A running source: it offers messages to its route (`RouteRunner.offer`)."""

    async def start(self) -> None: ...

    def retarget(self, runner: Any) -> None:
        """Feed `runner` (the route that replaces this one) from now on."""

    def pause(self) -> None:
        """Take no more messages; what arrived still goes on."""

    async def stop(self, grace: float = 5.0) -> None:
        """The node stops: stop taking, keep any server-side state (sessions, consumers)."""

    async def remove(self, grace: float = 5.0) -> None:
        """The route is gone: stop taking and end server-side state too."""


#: makes an instance, not started: a source's is ``build(context, configuration, the route's
#: runner)``, a sink's ``build(context, configuration, sink name, outbox or None)`` (the
#: configuration is the connector's own model, hence the loose type)
Factory = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Connector:
    """One kind of source or sink."""

    kind: str
    role: Role
    #: the configuration's model: the manifest's ``source: {<kind>: …}`` is validated by it
    config: type[BaseModel]
    build: Factory
    #: acknowledgement and backpressure semantics, stated for people (docs, describe)
    semantics: str
    #: importable modules the connector needs, with the distribution that provides each
    requires: tuple[tuple[str, str], ...] = ()
    #: sources: the topic pattern (with {variables}) of what it produces, for the first
    #: step's subscribe grants and per-device ordering; None when it cannot be known
    pattern: Callable[[Any], str | None] | None = None
    #: the pip extra of iotwasm that brings `requires` (named in the missing-package error)
    extra: str | None = None


def require(connector: Connector) -> None:
    """Import what `connector` needs now; a missing one is a `ConfigError` naming the
    package and the connector (one line; the node prefixes the route)."""
    for module, dist in connector.requires:
        try:
            importlib.import_module(module)
        except ImportError:
            hint = f"pip install 'iotwasm[{connector.extra}]'" if connector.extra else f"pip install {dist}"
            raise ConfigError(f"the {connector.kind} {connector.role} needs the Python package "
                              f"{dist!r}, which is not installed ({hint})") from None


@dataclass
class Registry:
    """Connector kinds by role and name; entry points are read once, on the first miss."""

    _kinds: dict[tuple[Role, str], Connector] = field(default_factory=dict)
    _discovered: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: entry points that could not be loaded: name → one-line reason
    broken: dict[str, str] = field(default_factory=dict)

    def register(self, connector: Connector, *, replace: bool = False) -> Connector:
        key = (connector.role, connector.kind)
        if key in self._kinds and not replace and self._kinds[key] is not connector:
            raise ConfigError(f"{connector.role} connector {connector.kind!r} is registered twice")
        self._kinds[key] = connector
        return connector

    def get(self, role: Role, kind: str) -> Connector:
        c = self._kinds.get((role, kind))
        if c is None:
            self.discover()
            c = self._kinds.get((role, kind))
        if c is None:
            known = ", ".join(sorted(k for r, k in self._kinds if r == role)) or "none"
            why = f" (its entry point failed: {self.broken[kind]})" if kind in self.broken else ""
            raise ConfigError(f"unknown {role} connector {kind!r}{why}; known: {known}")
        return c

    def kinds(self, role: Role) -> list[str]:
        self.discover()
        return sorted(k for r, k in self._kinds if r == role)

    def discover(self, *, again: bool = False) -> None:
        """Load the ``iotwasm.connectors`` entry points of the installed distributions. One
        that fails to load is logged and remembered (`broken`), never fatal: the node runs
        without it and a manifest using it is told why."""
        with self._lock:
            if self._discovered and not again:
                return
            self._discovered = True
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    obj = ep.load()
                    found = obj if isinstance(obj, (list, tuple)) else [obj]
                    for c in found:
                        if not isinstance(c, Connector):
                            raise TypeError(f"{ep.value} is a {type(c).__name__}, not a Connector")
                        if (c.role, c.kind) in self._kinds and self._kinds[(c.role, c.kind)] is not c:
                            raise ConfigError(f"{c.role} connector {c.kind!r} is already registered")
                        self._kinds[(c.role, c.kind)] = c
                except Exception as e:  # noqa: BLE001 - a broken plugin must not stop the node
                    self.broken[ep.name] = f"{type(e).__name__}: {e}"
                    log.warning("connector entry point %s (%s) not loaded: %s: %s",
                                ep.name, ep.value, type(e).__name__, e)


#: the process's registry: built-in kinds register on import, plugins on first miss
registry = Registry()


def status_of(instance: Any, kind: str) -> dict:
    """A connector instance's health and counters (`status()` when it has one)."""
    status = getattr(instance, "status", None)
    if status is not None:
        out = dict(status())
    else:
        out = {"health": "ok", "counters": {}}
    out.setdefault("health", "ok")
    out.setdefault("counters", {})
    return {"kind": kind, **out}
