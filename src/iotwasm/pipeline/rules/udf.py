"""User-defined functions in WASM: a deployment's module called from inside rules.

The module speaks the ordinary iotwasm ABI v1 (docs/abi.md); nothing rule-specific is needed
in the guest. One call site in a rule becomes one input message per evaluation, whose payload
is the JSON of its argument when there is one (`21.5`, `{"value": 21.5, "unit": "C"}` built
with `object(...)`), else the JSON array of the arguments (`[21.5, "t1"]`); an aggregate
function gets the JSON array of the window's values. The function's result is the first output the module
emits for that input, read as JSON (or as text when it is not JSON); no output is NULL.

All evaluations of a batch go to the module in one `process()` call (one guest call for
hundreds of rows). The deployment's sandbox and limits apply unchanged: an input that traps
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
        self._lock = threading.Lock()

    def call_many(self, arg_lists: list[list[Any]]) -> list[Any]:
        """One guest call for all; each result is a value or an EvalError for that evaluation."""
        if not arg_lists:
            return []
        out: list[Any] = [None] * len(arg_lists)
        msgs = []
        idx = []
        topic = self.topic
        for i, args in enumerate(arg_lists):
            try:
                msgs.append(Message(topic, _encode(args[0] if len(args) == 1 else args), 0))
                idx.append(i)
            except (TypeError, ValueError) as e:
                out[i] = EvalError(f"function {self.name}: arguments are not JSON: {e}")
        try:
            result = self.processor.process(msgs)
        except IotwasmError as e:
            err = EvalError(f"function {self.name} (deployment {self.deployment}) unavailable: {e}")
            self._count(len(arg_lists), str(err))
            return [err] * len(arg_lists)
        seen = set()
        for o in result.outputs:
            if o.index not in seen:
                seen.add(o.index)
                out[idx[o.index]] = _decode(o.payload)
        failed = 0
        for dl in result.dead_letters:
            out[idx[dl.index]] = EvalError(f"function {self.name}: {dl.error}")
            failed += 1
        self._count(len(arg_lists), str(result.dead_letters[-1].error) if failed else None, failed)
        return out

    def _count(self, calls: int, error: str | None, failed: int | None = None) -> None:
        with self._lock:
            self.calls += calls
            if error is not None:
                self.errors += calls if failed is None else failed
                self.last_error = error

    def call_one(self, args: list[Any]) -> Any:
        return self.call_many([args])[0]
