"""What a container may touch. Everything is denied unless granted here.

Host functions of the `iot` import module are grouped into capabilities; a function is linked
into an instance only when its capability is granted, so a module cannot even be instantiated
if it imports something it was not given. WASI programs see argv, environment variables and
directories only as listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .http_client import HttpGrant

#: capability name -> host functions of the `iot` module it grants
HOST_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "log": ("log",),
    "clock": ("now_ms",),
    "random": ("random_fill",),
    "kv": ("kv_get", "kv_set", "kv_delete"),
    "config": ("config_get",),
    "metrics": ("metric",),
    "http": ("http_request",),
    # a device's twin (reported, desired, delta) in the deployment's own namespace
    "twin": ("twin_get",),
}

#: host function -> capability that grants it
CAPABILITY_OF: dict[str, str] = {fn: cap for cap, fns in HOST_CAPABILITIES.items() for fn in fns}

#: granting this lets an iotwasm-v1 module import WASI preview 1 (with no dirs/env/args)
WASI = "wasi"


@dataclass(frozen=True, slots=True)
class Preopen:
    """A host directory visible to a WASI guest at `guest_path`; read-only unless `writable`."""

    host_path: str
    guest_path: str
    writable: bool = False


@dataclass(frozen=True)
class Capabilities:
    host: frozenset[str] = frozenset()
    config: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    dirs: tuple[Preopen, ...] = ()
    kv_quota: int = 1024 * 1024
    #: the allow-list of the `http` capability (an empty list denies every URL)
    http: HttpGrant = field(default_factory=HttpGrant)

    def __post_init__(self) -> None:
        unknown = set(self.host) - set(HOST_CAPABILITIES) - {WASI}
        if unknown:
            known = ", ".join(sorted([*HOST_CAPABILITIES, WASI]))
            raise ConfigError(f"unknown capability {sorted(unknown)[0]!r} (known: {known})")

    @classmethod
    def grant(cls, *names: str, **kw: Any) -> "Capabilities":
        """Capabilities.grant('log', 'kv', config={'min': '10'})."""
        return cls(host=frozenset(names), **kw)

    @classmethod
    def all(cls, **kw: Any) -> "Capabilities":
        return cls(host=frozenset([*HOST_CAPABILITIES, WASI]), **kw)

    def allows(self, capability: str) -> bool:
        return capability in self.host
