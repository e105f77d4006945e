"""User-defined functions in WASM: a deployment's module called from inside rules.

The module speaks the ordinary iotwasm ABI v1 (docs/abi.md); nothing rule-specific is needed
in the guest. One call site in a rule becomes one input message per evaluation, whose payload
is the JSON of its argument when there is one (`21.5`, `{"value": 21.5, "unit": "C"}` built
with `object(...)`), else the JSON array of the arguments (`[21.5, "t1"]`); an aggregate
function gets the JSON array of the window's values. The function's result is the first output the module
emits for that input, read as JSON (or as text when it is not JSON); no output is NULL.

All evaluations of a batch go to the module in one `process()` call (one guest call for
hundreds of rows). A scalar function is taken to be pure within a batch: while the engine
works through one batch, a given argument is sent to the module once and its result reused —
by the other rows and by every other rule calling the same function (a hundred rules with
`check(temperature)` over one stream make one guest call per batch, not a hundred). The deployment's sandbox and limits apply unchanged: an input that traps
or hits a limit comes back as a dead letter, which fails that one evaluation with a counted
error; the other rows of the batch and the rule carry on.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol, Sequence

from ...errors import IotwasmError
from ...message import BatchResult, Message
from .functions import EvalError


class Processor(Protocol):
    """What a deployment offers the pipeline (the node's DeploymentHandle has it)."""

    def process(self, messages: Sequence[Message]) -> BatchResult: ...


_json_decode = json.JSONDecoder().decode
_json_encode = json.JSONEncoder(separators=(",", ":")).encode
_NUMERIC = frozenset(b"-0123456789")


def _decode(payload: bytes) -> Any:
    if payload and payload[0] in _NUMERIC:   # the common case, a number: skip the JSON machinery
        try:
            return int(payload)
        except ValueError:
            try:
                return float(payload)
            except ValueError:
                pass
    try:
        return _json_decode(payload.decode("utf-8"))
    except ValueError:
        return payload.decode("utf-8", "replace")


def _encode(v: Any) -> bytes:
    t = type(v)
    if t is int or (t is float and v - v == 0):   # finite numbers print as JSON already
        return repr(v).encode()
    return _json_encode(v).encode()


class WasmFunction:
    def __init__(self, name: str, processor: Processor, kind: str = "scalar", deployment: str = ""):
        if kind not in ("scalar", "aggregate"):
            raise ValueError(f"function {name}: kind must be scalar or aggregate, not {kind!r}")
        self.name = name
        self.kind = kind
        self.processor = processor
        self.deployment = deployment or name
        self.topic = f"rules/functions/{name}"
        self.calls = 0
        self.errors = 0
        self.last_error: str | None = None
        self.guest_calls = 0              # process() calls made (evaluations are `calls`)
        self._lock = threading.Lock()
        self._memo: dict[bytes, Any] | None = None   # argument payload → result, in a batch

    def begin_batch(self, shared: dict | None = None) -> None:
        """The engine starts a batch: results may be reused until `end_batch` (scalar only).
        `shared` is the engine's memo for this batch, so every rule's function over the same
        deployment reuses the others' results."""
        if self.kind == "scalar":
            self._memo = {} if shared is None else shared.setdefault(("scalar", self.deployment), {})

    def end_batch(self) -> None:
        self._memo = None

    def call_many(self, arg_lists: list[list[Any]]) -> list[Any]:
        """One guest call for all; each result is a value or an EvalError for that evaluation."""
        if not arg_lists:
            return []
        out: list[Any] = [None] * len(arg_lists)
        memo = self._memo
        wanted: dict[bytes, list[int]] = {}    # payload → the evaluations waiting for it
        reused = 0                             # results taken from the memo that are errors
        for i, args in enumerate(arg_lists):
            try:
                payload = _encode(args[0] if len(args) == 1 else args)
            except (TypeError, ValueError) as e:
                out[i] = EvalError(f"function {self.name}: arguments are not JSON: {e}")
                continue
            if memo is not None and payload in memo:
                v = out[i] = memo[payload]
                reused += isinstance(v, EvalError)
            else:
                wanted.setdefault(payload, []).append(i)
        if not wanted:
            last = next((v for v in reversed(out) if isinstance(v, EvalError)), None) if reused else None
            self._count(len(arg_lists), str(last) if last is not None else None, reused)
            return out
        if memo is None and self.kind == "aggregate":   # every window's values are their own call
            payloads = [p for p, idx in wanted.items() for _ in idx]
            slots = [i for idx in wanted.values() for i in idx]
        else:
            payloads = list(wanted)
            slots = None
        topic = self.topic
        try:
            result = self.processor.process([Message(topic, p, 0) for p in payloads])
        except IotwasmError as e:
            err = EvalError(f"function {self.name} (deployment {self.deployment}) unavailable: {e}")
            self._count(len(arg_lists), str(err))
            for idx in wanted.values():
                for i in idx:
                    out[i] = err
            return out
        self.guest_calls += 1
        results: list[Any] = [None] * len(payloads)
        seen = set()
        for o in result.outputs:
            if o.index not in seen:
                seen.add(o.index)
                results[o.index] = _decode(o.payload)
        failed = reused
        for dl in result.dead_letters:
            results[dl.index] = EvalError(f"function {self.name}: {dl.error}")
        if slots is not None:
            for k, i in enumerate(slots):
                out[i] = results[k]
            failed += sum(isinstance(v, EvalError) for v in results)
        else:
            for k, p in enumerate(payloads):
                v = results[k]
                if memo is not None:
                    memo[p] = v
                for i in wanted[p]:
                    out[i] = v
                if isinstance(v, EvalError):
                    failed += len(wanted[p])
        last = next((v for v in reversed(out) if isinstance(v, EvalError)), None) if failed else None
        self._count(len(arg_lists), str(last) if last is not None else None, failed)
        return out

    def _count(self, calls: int, error: str | None, failed: int | None = None) -> None:
        with self._lock:
            self.calls += calls
            if error is not None:
                self.errors += calls if failed is None else failed
                self.last_error = error

    def call_one(self, args: list[Any]) -> Any:
        return self.call_many([args])[0]
