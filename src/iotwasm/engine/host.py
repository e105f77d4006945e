"""The `iot` host module: what a guest can ask of the host, capability by capability.

A container's host context (its name, capabilities, key-value store and the sinks for logs
and metrics) is captured by closures defined on one wasmtime Linker per container. Only the
functions of granted capabilities are defined, so a module that imports anything else fails
to link with `CapabilityDenied` before any of its code runs.

Host calls are the slow path (a Python round trip each); data moves through the batch
buffers of the ABI instead.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import wasmtime

from ..errors import AbiError, CapabilityDenied
from ..message import now_ms
from .capabilities import CAPABILITY_OF, WASI, Capabilities
from .fastcall import host_failure
from .hostcall import CallerMemory, RawHostFn, define_raw, watch
from .http_client import HttpRequestFailed, MAX_REQUEST, parse_request, request as http_request

HOST_MODULE = "iot"
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
MAX_LOG_LINE = 4096
MAX_KEY = 256
#: the longest device id `twin_get` reads
MAX_DEVICE_ID = 128

guest_log = logging.getLogger("iotwasm.guest")

#: the `time.monotonic()` at which the guest call running on this thread runs out of time
#: (None: no limit); set by the ABI before each call of a module granted `http`, read by the
#: request so that time spent waiting on the network counts toward the module's time limit
call_budget = threading.local()


class KeyValue(Protocol):
    """Per-container key-value storage behind the `kv` capability."""

    def get(self, key: bytes) -> bytes | None: ...
    def set(self, key: bytes, value: bytes) -> bool: ...  # False when over quota
    def delete(self, key: bytes) -> bool: ...


class MemoryKeyValue:
    """In-memory key-value store with a byte quota (keys + values)."""

    def __init__(self, quota: int = 1024 * 1024):
        self.quota = quota
        self._data: dict[bytes, bytes] = {}
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def set(self, key: bytes, value: bytes) -> bool:
        with self._lock:
            old = self._data.get(key)
            delta = len(value) - (len(old) if old is not None else -len(key))
            if self._used + delta > self.quota:
                return False
            self._data[key] = value
            self._used += delta
            return True

    def delete(self, key: bytes) -> bool:
        with self._lock:
            old = self._data.pop(key, None)
            if old is None:
                return False
            self._used -= len(key) + len(old)
            return True

    def items(self) -> dict[bytes, bytes]:
        return dict(self._data)


def _default_log(container: str, level: int, text: str) -> None:
    guest_log.log(LOG_LEVELS.get(level, logging.INFO), "[%s] %s", container, text)


@dataclass
class HostContext:
    """Everything a container's guests may reach through host functions."""

    container: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    kv: KeyValue | None = None
    on_log: Callable[[str, int, str], None] = _default_log
    on_metric: Callable[[str, int, str, float], None] | None = None
    #: the `twin` capability: a device id → its twin as JSON bytes, or None when the device is
    #: unknown. The node binds it to the deployment's namespace, so a module reads only its
    #: own tenant's devices; without a registry (``iotwasm run``) every device is unknown.
    twin: Callable[[str], bytes | None] | None = None

    def __post_init__(self) -> None:
        if self.kv is None:
            self.kv = MemoryKeyValue(self.capabilities.kv_quota)


def check_imports(module: wasmtime.Module, name: str, caps: Capabilities) -> None:
    """Refuse, with the import and the capability it needs, anything the grant does not cover."""
    for imp in module.imports:
        if imp.module == HOST_MODULE:
            cap = CAPABILITY_OF.get(imp.name or "")
            if cap is None:
                raise AbiError(f"imports unknown host function {HOST_MODULE}.{imp.name}", module=name)
            if not caps.allows(cap):
                raise CapabilityDenied(
                    f"imports {HOST_MODULE}.{imp.name}, which needs capability {cap!r} (not granted)",
                    module=name)
        elif imp.module in WASI_MODULES:
            if not caps.allows(WASI):
                raise CapabilityDenied(
                    f"imports {imp.module}.{imp.name}, which needs capability 'wasi' (not granted)",
                    module=name)
        else:
            raise CapabilityDenied(f"imports {imp.module}.{imp.name}, which no capability provides",
                                   module=name)


def _i32(v: int) -> int:
    return v & 0xFFFFFFFF


def _write_out(mem: CallerMemory, value: bytes | None, ptr: int, cap: int, what: str) -> int:
    """Copy `value` to the guest buffer when it fits; return its length, or -1 when absent."""
    if value is None:
        return -1
    if len(value) <= _i32(cap):
        mem.write(ptr, value, what, noun="buffer")
    return len(value)


def define_host(linker: wasmtime.Linker, ctx: HostContext) -> None:
    """Define on `linker` the `iot` functions the context's capabilities grant.

    Each gets the calling guest's memory (`CallerMemory`, bounds-checked) and its raw
    arguments; an AbiError it raises traps the guest and is what the caller reports."""
    caps = ctx.capabilities
    name = ctx.container
    i32, i64, f64 = wasmtime.ValType.i32(), wasmtime.ValType.i64(), wasmtime.ValType.f64()
    kv = ctx.kv
    assert kv is not None  # filled by HostContext.__post_init__

    def define(fn_name: str, params: list[wasmtime.ValType], results: list[wasmtime.ValType],
               fn: RawHostFn) -> None:
        if caps.allows(CAPABILITY_OF[fn_name]):
            define_raw(linker, HOST_MODULE, fn_name, wasmtime.FuncType(params, results), fn)

    def log(mem: CallerMemory, level: int, ptr: int, n: int) -> None:
        line = mem.read(ptr, min(_i32(n), MAX_LOG_LINE), "iot.log").decode("utf-8", "replace")
        lines = getattr(watch, "logs", None)
        if lines is not None:   # a start-up being recorded: written again by every copy of it
            lines.append((level, line))
        ctx.on_log(name, level, line)

    def clock(mem: CallerMemory) -> int:
        return now_ms()

    def random_fill(mem: CallerMemory, ptr: int, n: int) -> None:
        n = _i32(n)
        if n > 65536:
            raise AbiError(f"iot.random_fill: {n} bytes asked, at most 65536 per call")
        mem.write(ptr, secrets.token_bytes(n), "iot.random_fill")

    def key(mem: CallerMemory, ptr: int, n: int) -> bytes:
        if _i32(n) > MAX_KEY:
            raise AbiError(f"kv key of {_i32(n)} bytes is longer than {MAX_KEY}")
        return mem.read(ptr, n, "iot.kv key")

    def kv_get(mem: CallerMemory, kp: int, kn: int, vp: int, vcap: int) -> int:
        return _write_out(mem, kv.get(key(mem, kp, kn)), vp, vcap, "iot.kv_get")

    def kv_set(mem: CallerMemory, kp: int, kn: int, vp: int, vn: int) -> int:
        ok = kv.set(key(mem, kp, kn), mem.read(vp, vn, "iot.kv_set value"))
        return 0 if ok else -1

    def kv_delete(mem: CallerMemory, kp: int, kn: int) -> int:
        return 0 if kv.delete(key(mem, kp, kn)) else -1

    # config is read-only for the factory's lifetime: values are encoded once, not per call
    config = {k: str(v).encode() for k, v in caps.config.items()}

    def config_get(mem: CallerMemory, kp: int, kn: int, vp: int, vcap: int) -> int:
        k = mem.read(kp, kn, "iot.config_get key").decode("utf-8", "replace")
        return _write_out(mem, config.get(k), vp, vcap, "iot.config_get")

    def metric(mem: CallerMemory, kind: int, np_: int, nn: int, value: float) -> None:
        metric_name = mem.read(np_, min(_i32(nn), 128), "iot.metric name").decode("utf-8", "replace")
        if ctx.on_metric is not None:
            ctx.on_metric(name, kind, metric_name, value)

    def twin_get(mem: CallerMemory, ip: int, n: int, vp: int, vcap: int) -> int:
        if _i32(n) > MAX_DEVICE_ID:
            raise AbiError(f"iot.twin_get: device id of {_i32(n)} bytes is longer than {MAX_DEVICE_ID}")
        device = mem.read(ip, n, "iot.twin_get device id").decode("utf-8", "replace")
        value = ctx.twin(device) if ctx.twin is not None else None
        return _write_out(mem, value, vp, vcap, "iot.twin_get")

    define("log", [i32, i32, i32], [], log)
    define("now_ms", [], [i64], clock)
    define("random_fill", [i32, i32], [], random_fill)
    define("kv_get", [i32, i32, i32, i32], [i32], kv_get)
    define("kv_set", [i32, i32, i32, i32], [i32], kv_set)
    define("kv_delete", [i32, i32], [i32], kv_delete)
    define("config_get", [i32, i32, i32, i32], [i32], config_get)
    define("metric", [i32, i32, i32, f64], [], metric)
    define("http_request", [i32, i32, i32, i32], [i32], lambda mem, rp, rn, op, ocap:
           _http_request(ctx, mem, rp, rn, op, ocap))
    define("twin_get", [i32, i32, i32, i32], [i32], twin_get)


def _http_request(ctx: HostContext, mem: CallerMemory, req_ptr: int, req_len: int,
                  out_ptr: int, out_cap: int) -> int:
    """`iot.http_request`: status (u32 LE) then body at out_ptr; returns the body's length
    (the copy is cut at out_cap - 4), or a negative code (docs/abi.md). A URL outside the
    allow-list traps the call with `CapabilityDenied` naming it and the list."""
    if _i32(req_len) > MAX_REQUEST:
        raise AbiError(f"iot.http_request: request of {_i32(req_len)} bytes, at most {MAX_REQUEST}")
    if _i32(out_cap) < 4:
        raise AbiError(f"iot.http_request: response buffer of {_i32(out_cap)} bytes, at least 4")
    raw = mem.read(req_ptr, req_len, "iot.http_request request")
    try:
        method, url, headers, body = parse_request(raw)
    except ValueError as e:
        raise AbiError(f"iot.http_request: {e}") from None
    try:
        status, data = http_request(ctx.capabilities.http, method, url, headers, body,
                                    getattr(call_budget, "at", None))
    except HttpRequestFailed as e:
        ctx.on_log(ctx.container, 2, str(e))
        return e.code
    except CapabilityDenied as e:
        # not an AbiError: parked so the caller reports the refusal itself, not a generic trap
        host_failure.error = e
        raise
    mem.write(out_ptr, status.to_bytes(4, "little") + data[:_i32(out_cap) - 4],
              "iot.http_request response")
    return len(data)
