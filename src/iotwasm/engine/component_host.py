"""The host interfaces of the `iotwasm:module` WIT package (wit/processor.wit).

Each interface is granted by the capability of the same name — the component counterpart of
the `iot` host module of ABI v1 (engine/host.py), reaching the same `HostContext`. Only the
granted interfaces are defined on a container's linker; `batch` is always defined, it is
part of the processor contract.

Host calls are the slow path (wasmtime-py converts each argument through Python): data moves
through the batch string instead.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import wasmtime
import wasmtime.component as wc

from ..errors import AbiError
from ..message import now_ms
from .fastcall import host_failure
from .host import MAX_KEY, MAX_LOG_LINE, HostContext

PACKAGE = "iotwasm:module"
VERSION = "1.0.0"
WORLD = f"{PACKAGE}/processor@{VERSION}"


def interface(name: str) -> str:
    return f"{PACKAGE}/{name}@{VERSION}"


BATCH = interface("batch")
#: capability -> the interface it grants (they share their names)
INTERFACES: dict[str, str] = {cap: interface(cap)
                              for cap in ("log", "config", "kv", "clock", "random", "metrics")}
CAPABILITY_OF_INTERFACE: dict[str, str] = {i: cap for cap, i in INTERFACES.items()}
LOG_LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 3}

# The guest whose call is running on this thread: host functions run on the calling thread,
# so this is how `batch.commit` finds the guest it reports for.
active = threading.local()


def _fail(err: Exception) -> NoReturn:
    """Fail the running call with a typed error its caller's thread picks up."""
    host_failure.error = err
    raise err


def _key(key: str) -> bytes:
    raw = key.encode()
    if len(raw) > MAX_KEY:
        _fail(AbiError(f"kv key of {len(raw)} bytes is longer than {MAX_KEY}"))
    return raw


def _functions(ctx: HostContext) -> dict[str, dict[str, Callable[..., Any]]]:
    caps = ctx.capabilities
    name = ctx.container
    kv = ctx.kv
    assert kv is not None  # filled by HostContext.__post_init__

    def write(store: wasmtime.StoreContext, level: str, message: str) -> None:
        ctx.on_log(name, LOG_LEVELS.get(level, 1), message[:MAX_LOG_LINE])

    def config_get(store: wasmtime.StoreContext, key: str) -> str | None:
        v = caps.config.get(key)
        return None if v is None else str(v)

    def kv_get(store: wasmtime.StoreContext, key: str) -> str | None:
        v = kv.get(_key(key))
        return None if v is None else v.decode("utf-8", "replace")

    def kv_set(store: wasmtime.StoreContext, key: str, value: str) -> bool:
        return bool(kv.set(_key(key), value.encode()))

    def kv_delete(store: wasmtime.StoreContext, key: str) -> bool:
        return bool(kv.delete(_key(key)))

    def metric(kind: int) -> Callable[..., None]:
        def record(store: wasmtime.StoreContext, metric_name: str, value: float) -> None:
            if ctx.on_metric is not None:
                ctx.on_metric(name, kind, metric_name[:128], value)
        return record

    return {
        "log": {"write": write},
        "config": {"get": config_get},
        "kv": {"get": kv_get, "set": kv_set, "delete": kv_delete},
        "clock": {"now-ms": lambda store: now_ms()},
        "random": {"next-u64": lambda store: secrets.randbits(64)},
        "metrics": {"counter-add": metric(0), "gauge-set": metric(1)},
    }


def _commit(store: wasmtime.StoreContext, done: int, outputs: str) -> None:
    guest = getattr(active, "guest", None)
    if guest is None:
        _fail(AbiError("batch.commit called outside a process call"))
    guest.commit(done, outputs)


def define_host(linker: wc.Linker, ctx: HostContext, imported: set[str]) -> None:
    """Define on `linker` the granted interfaces the component imports, and `batch`."""
    functions = _functions(ctx)
    with linker.root() as root:
        if BATCH in imported:
            with root.add_instance(BATCH) as inst:
                inst.add_func("commit", _commit)
        for cap, iface in INTERFACES.items():
            if iface in imported and ctx.capabilities.allows(cap):
                with root.add_instance(iface) as inst:
                    for fn_name, fn in functions[cap].items():
                        inst.add_func(fn_name, fn)
