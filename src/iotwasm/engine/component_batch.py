"""Host side of the component batch encoding (docs/abi.md, "Component ABI").

A batch crosses into a component as one `string` and the outputs come back as one `string`:
records separated by U+001E (RS), fields by U+001F (US). One string per call is what makes
components usable on the hot path — wasmtime-py converts every list element through Python,
so a `list<string>` costs 2–3× more and a `list<u8>` ~25× more per message.

    input record   <flag><timestamp_ms> US <topic> US <payload>
                   flag 0 as is, 1 payload base64, 2 topic base64, 3 both
    output record  <input index> US <kind> US <topic> US <payload>
                   kind m message, b message with base64 payload, i the input's payload
                   unchanged, r reject (payload = reason); empty topic = route default

Most batches are text without control characters; that case is checked for the whole batch
at once (two byte counts and one UTF-8 check) instead of per message.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from ..errors import AbiError
from ..message import Message, Output
from .component_fastcall import check_utf8

RS = b"\x1e"
US = b"\x1f"
_B64 = binascii.b2a_base64


def encode_batch(messages: Sequence[Message]) -> bytes:
    """The batch string (as UTF-8 bytes) for `messages`."""
    try:
        data = RS.join([b"0%d\x1f%s\x1f%s" % (m.timestamp_ms, m.topic.encode(), m.payload)
                        for m in messages])
    except UnicodeEncodeError:  # a topic holding lone surrogates
        return _encode_each(messages)
    n = len(messages)
    if data.count(RS) != n - 1 or data.count(US) != 2 * n or not check_utf8(data):
        return _encode_each(messages)
    return data


def _plain(field: bytes) -> bool:
    return RS not in field and US not in field and check_utf8(field)


def _encode_each(messages: Sequence[Message]) -> bytes:
    """Slow path: base64 for any topic or payload that is binary or holds a separator."""
    parts = []
    for m in messages:
        topic = m.topic.encode("utf-8", "surrogatepass")
        payload = m.payload
        flag = 0
        if not _plain(payload):
            payload = _B64(payload, newline=False)
            flag |= 1
        if not _plain(topic):
            topic = _B64(topic, newline=False)
            flag |= 2
        parts.append(b"%d%d\x1f%s\x1f%s" % (flag, m.timestamp_ms, topic, payload))
    return RS.join(parts)


def decode_outputs(data: bytes, chunk: Sequence[Message], base: int
                   ) -> tuple[list[Output], list[tuple[int, str]]]:
    """Parse output records of `chunk` (indices shifted by `base`) into outputs and rejects.

    The guest is untrusted: a malformed record, an unknown kind or an index outside the
    chunk makes the whole result an AbiError.
    """
    outputs: list[Output] = []
    rejects: list[tuple[int, str]] = []
    if not data:
        return outputs, rejects
    n = len(chunk)
    add = outputs.append
    new = tuple.__new__
    for rec in data.split(RS):
        fields = rec.split(US, 3)
        if len(fields) != 4:
            raise AbiError(f"output record {_excerpt(rec)} does not have 4 fields")
        idx_b, kind, topic_b, payload = fields
        try:
            idx = int(idx_b)
        except ValueError:
            raise AbiError(f"output record {_excerpt(rec)} has no input index") from None
        if not 0 <= idx < n or not idx_b.isdigit():
            raise AbiError(f"output record names input {_excerpt(idx_b)}, batch has {n}")
        topic = topic_b.decode() if topic_b else None
        if kind == b"i":
            payload = chunk[idx].payload
        elif kind == b"b":
            try:
                payload = binascii.a2b_base64(payload, strict_mode=True)
            except binascii.Error:
                raise AbiError(f"output record of input {idx} has bad base64") from None
        elif kind == b"r":
            rejects.append((base + idx, payload.decode()))
            continue
        elif kind != b"m":
            raise AbiError(f"output record has unknown kind {_excerpt(kind)}")
        add(new(Output, (base + idx, topic, payload)))
    return outputs, rejects


def _excerpt(b: bytes) -> str:
    return repr(b[:40].decode("utf-8", "replace"))
