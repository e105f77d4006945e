"""`open_bus`: a bus from a URL, beside the transports it chooses between.

The abstract `Bus` (bus_interface.py, re-exported by bus.py) knows no transport; this module
is the one place that imports the MQTT and NATS buses, the way httpx keeps its transports apart
from its client. The NATS bus needs nats-py, so it is imported only when a ``nats://`` URL asks
for it.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

from ..errors import ConfigError
from .bus import Bus, InProcessBus

#: integer options an ``mqtt://`` URL may carry in its query string
_MQTT_INT_OPTIONS = ("keepalive", "max_packet_size", "session_expiry", "receive_maximum",
                     "topic_aliases", "gather_ms")
#: how an ``mqtt://`` URL may name the protocol version: MQTT 3.1.1 is protocol level 4
_MQTT_VERSIONS = {"4": 4, "3.1.1": 4, "311": 4, "5": 5, "5.0": 5}


def _query_flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def open_bus(url: str | None = None, **options: Any) -> Bus:
    """Make a bus from a URL (not yet connected: call `await bus.connect()`).

    * ``None`` or ``memory://`` -> `InProcessBus`
    * ``mqtt://[user:password@]host[:port][?client_id=ID&keepalive=S&max_packet_size=B
      &version=5&session_expiry=S&receive_maximum=N&topic_aliases=N&gather_ms=MS]`` -> `MqttBus`
      (``mqtts://`` for TLS with the system's trusted CAs, port 8883; ``version`` is
      ``3.1.1``, the default, or ``5``; the last three options need 5)
    * ``nats://[user:password@]host[:port][?jetstream=1&stream=NAME]`` -> `NatsBus`

    Keyword options are passed to the bus's constructor and win over the query string. A
    malformed option raises `ConfigError` naming the option and the URL.
    """
    if url is None or url in ("memory://", "memory:"):
        return InProcessBus(**options)
    parsed = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parsed.query))
    base = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path, "", ""))
    scheme = parsed.scheme.lower()
    if scheme == "memory":
        return InProcessBus(**options)
    if scheme in ("mqtt", "mqtts"):
        from .mqtt_bus import MqttBus

        kwargs: dict[str, Any] = {}
        if "client_id" in query:
            kwargs["client_id"] = query.pop("client_id")
        if "version" in query:
            value = query.pop("version")
            if value not in _MQTT_VERSIONS:
                raise ConfigError(f"version in {url!r} must be 3.1.1 or 5, not {value!r}")
            kwargs["version"] = _MQTT_VERSIONS[value]
        for key in _MQTT_INT_OPTIONS:
            if key in query:
                value = query.pop(key)
                try:
                    kwargs[key] = int(value)
                except ValueError:
                    raise ConfigError(f"{key} in {url!r} must be a whole number, not {value!r}") from None
        if query:
            raise ConfigError(f"unknown option(s) in {url!r}: {', '.join(sorted(query))}")
        kwargs.update(options)
        return MqttBus(base, **kwargs)
    if scheme == "nats":
        from .nats_bus import NatsBus

        kwargs = {}
        if "jetstream" in query:
            kwargs["jetstream"] = _query_flag(query.pop("jetstream"))
        if "stream" in query:
            kwargs["stream"] = query.pop("stream")
            kwargs.setdefault("jetstream", True)
        if query:
            raise ConfigError(f"unknown option(s) in {url!r}: {', '.join(sorted(query))}")
        kwargs.update(options)
        return NatsBus(base, **kwargs)
    if scheme == "ingress":
        return _worker_bus(url, parsed.path, query, options)
    raise ConfigError(f"unsupported bus URL {url!r}: use memory://, mqtt://, mqtts:// or nats://")


#: where a worker finds the secret its ingress asks for (set by the parent, never in a URL)
INGRESS_TOKEN_ENV = "IOTWASM_INGRESS_TOKEN"


def _worker_bus(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> Bus:
    """``ingress:///path/of/socket?worker=K&workers=N&publish=URL`` -> a `WorkerBus`
    (what `iotwasm up --workers N` gives its worker processes)."""
    from .worker_bus import WorkerBus

    try:
        worker, workers = int(query.pop("worker")), int(query.pop("workers"))
        publish = query.pop("publish")
    except KeyError as e:
        raise ConfigError(f"{url!r} needs {e.args[0]}=") from None
    except ValueError:
        raise ConfigError(f"worker and workers in {url!r} must be whole numbers") from None
    if query:
        raise ConfigError(f"unknown option(s) in {url!r}: {', '.join(sorted(query))}")
    token = os.environ.get(INGRESS_TOKEN_ENV)
    if not token:
        raise ConfigError(f"{url!r}: {INGRESS_TOKEN_ENV} is not set (a worker is started by "
                          f"`iotwasm up --workers`)")
    if publish.startswith("ingress"):
        raise ConfigError(f"{url!r}: a worker publishes on a broker, not through an ingress")
    return WorkerBus(path, worker, workers, bytes.fromhex(token), open_bus(publish, **options))
