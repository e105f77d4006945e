"""The framing of iotwasm ABI v1 batches (spec: docs/abi.md): input records the host writes,
output records and the output header the guest writes.

Kept apart from the guest's call logic (abi_v1.py) because it is pure data handling: the
fuzz and property tests of tests/test_framing.py exercise it without an instance.
"""

from __future__ import annotations

import struct
from typing import Sequence

from ..errors import AbiError
from ..message import Message, Output

IN_RECORD = struct.Struct("<qII")    # timestamp_ms, topic_len, payload_len
OUT_RECORD = struct.Struct("<IIII")  # input_index, kind, topic_len, payload_len
OUT_HEADER = struct.Struct("<II")    # used, inputs_done

KIND_MESSAGE = 0
KIND_ERROR = 1


def pack_inputs(messages: Sequence[Message]) -> bytes:
    """Frame messages as the input records of one batch."""
    if len(messages) == 1:  # a batch of one: no list to build and join
        m = messages[0]
        topic = m.topic.encode()
        return IN_RECORD.pack(m.timestamp_ms, len(topic), len(m.payload)) + topic + m.payload
    parts: list[bytes] = []
    add = parts.append
    pack = IN_RECORD.pack
    for m in messages:
        topic = m.topic.encode()
        payload = m.payload
        add(pack(m.timestamp_ms, len(topic), len(payload)))
        add(topic)
        add(payload)
    return b"".join(parts)


def unpack_inputs(data: bytes) -> list[Message]:
    """Inverse of pack_inputs (used by tests and tools, not on the hot path)."""
    out = []
    off = 0
    while off < len(data):
        ts, tl, pl = IN_RECORD.unpack_from(data, off)
        off += IN_RECORD.size
        topic = data[off:off + tl].decode()
        payload = data[off + tl:off + tl + pl]
        off += tl + pl
        out.append(Message(topic, payload, ts))
    return out


def pack_outputs(records: Sequence[tuple[int, int, bytes, bytes]]) -> bytes:
    """Frame (input_index, kind, topic, payload) records the way a guest writes them."""
    parts: list[bytes] = []
    for idx, kind, topic, payload in records:
        parts += [OUT_RECORD.pack(idx, kind, len(topic), len(payload)), topic, payload]
    return b"".join(parts)


def parse_outputs(buf: bytes, count: int, done: int, base: int
                  ) -> tuple[list[Output], list[tuple[int, str]]]:
    """Parse output records; keep those of inputs < `done`; indices shifted by `base`.

    The guest is untrusted: any record that is truncated, points outside the batch or has an
    unknown kind makes the whole buffer an AbiError. This loop runs once per output message,
    so it is written for speed: no per-record function calls beyond unpack and the tuple.
    """
    outputs: list[Output] = []
    errors: list[tuple[int, str]] = []
    add = outputs.append
    new = tuple.__new__
    unpack = OUT_RECORD.unpack_from
    off = 0
    end = len(buf)
    limit = end - 16
    while off < end:
        if off > limit:
            raise AbiError(f"output record header truncated at byte {off} of {end}")
        idx, kind, tl, pl = unpack(buf, off)
        off += 16
        stop = off + tl + pl
        if stop > end or idx >= done or kind:
            if stop > end:
                raise AbiError(f"output record at byte {off - 16} runs past the {end} bytes written")
            if idx >= count:
                raise AbiError(f"output record names input {idx}, batch has {count}")
            if kind > KIND_ERROR:
                raise AbiError(f"output record has unknown kind {kind}")
            if idx < done:  # an error record of a finished input
                errors.append((base + idx, buf[off + tl:stop].decode("utf-8", "replace")))
            off = stop
            continue
        if tl:
            add(new(Output, (base + idx, buf[off:off + tl].decode("utf-8", "replace"),
                             buf[off + tl:stop])))
        else:
            add(new(Output, (base + idx, None, buf[off:stop])))
        off = stop
    return outputs, errors
