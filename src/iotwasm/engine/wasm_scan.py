"""Reading a core module's binary for what a snapshot of its initialised state needs.

A guest's `iot_init` typically reads its configuration through host calls and fills a few
static buffers; every new instance of the same container would do exactly the same work. A
snapshot (engine/snapshot.py) records the state init left once and copies it into later
instances instead. That is only sound when the whole state of an instance is its memory and
its globals, which this module checks from the bytes, before anything runs:

- every import is a function (no imported memory, table or global the module could change);
- at most one memory, and every mutable global a plain number (i32, i64, f32, f64);
- no instruction in any function body changes a table or a segment (`table.set`,
  `table.grow`, `table.fill`, `table.copy`, `table.init`, `elem.drop`, `memory.init`,
  `data.drop`): those are state outside memory and globals. Any instruction this decoder does
  not know (exceptions, threads, GC, ...) counts as unsafe too.

Globals that are not exported cannot be read from the host, so `plan()` also returns the
module with an export added for each mutable global it defines (names under a reserved prefix,
hidden from the module's description). Nothing else in the binary changes.

Every read is bounded by the section it is in; a malformed module is simply not planned (the
compiler then reports it as it always does).
"""

from __future__ import annotations

from dataclasses import dataclass

#: exports added for a module's mutable globals: `<prefix><global index>`
EXPORT_PREFIX = "iotwasm!snapshot!global!"
#: decoding function bodies in Python costs ~1 µs per instruction: larger code is not planned
MAX_CODE_BYTES = 1 << 20

_NUMERIC = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64"}
_ONE_BYTE_TYPES = frozenset((0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F))
_BLOCK_TYPES = _ONE_BYTE_TYPES | {0x40}
#: opcodes without immediates: control, parametric, numeric (0x45-0xC4), ref.is_null
_BARE = frozenset((0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1, *range(0x45, 0xC5)))
#: opcodes with one u32 immediate: br, br_if, call, return_call, call_ref, return_call_ref,
#: local/global get/set/tee, table.get, ref.func, memory.size/grow (memory index)
_ONE_U32 = frozenset((0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
                      0xD2, 0x3F, 0x40))
#: 0xFC sub-opcodes: immediates (u32 count), or None where the instruction changes state
#: outside memory and globals
_FC: dict[int, int | None] = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0,
                              8: None, 9: None, 10: 2, 11: 1, 12: None, 13: None, 14: None,
                              15: None, 16: 1, 17: None}
#: 0xFD (SIMD) sub-opcodes with a memarg, with a memarg and a lane, with 16 bytes, with a lane
_FD_MEMARG = frozenset((*range(0x00, 0x0C), 0x5C, 0x5D))
_FD_MEMARG_LANE = frozenset(range(0x54, 0x5C))
_FD_BYTES16 = frozenset((0x0C, 0x0D))
_FD_LANE = frozenset(range(0x15, 0x23))


class Unplannable(Exception):
    """Why a module's state cannot be captured (or its bytes could not be read)."""


@dataclass(frozen=True, slots=True)
class SnapshotPlan:
    """The mutable globals a snapshot captures: (export name, value type) each."""

    globals: tuple[tuple[str, str], ...]

    def to_record(self) -> list[list[str]]:
        return [[n, t] for n, t in self.globals]

    @classmethod
    def from_record(cls, rec: object) -> "SnapshotPlan":
        if not isinstance(rec, list) or not all(
                isinstance(g, list) and len(g) == 2 and g[1] in _NUMERIC.values() for g in rec):
            raise ValueError("not a snapshot plan")
        return cls(tuple((str(n), str(t)) for n, t in rec))


class _Reader:
    __slots__ = ("b", "pos", "end")

    def __init__(self, b: bytes, pos: int, end: int):
        self.b, self.pos, self.end = b, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise Unplannable("truncated")
        v = self.b[self.pos]
        self.pos += 1
        return v

    def u32(self) -> int:
        result = shift = 0
        while True:
            v = self.byte()
            result |= (v & 0x7F) << shift
            if v < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise Unplannable("LEB128 too long")

    def skip(self, n: int) -> None:
        if n > self.end - self.pos:
            raise Unplannable("truncated")
        self.pos += n

    def name(self) -> bytes:
        n = self.u32()
        start = self.pos
        self.skip(n)
        return self.b[start:self.pos]


def leb128(n: int) -> bytes:
    """`n` (unsigned) as LEB128, the encoding of every size and index in a wasm binary."""
    out = bytearray()
    while True:
        v, n = n & 0x7F, n >> 7
        out.append(v | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _instruction(r: _Reader) -> int:
    """Skip one instruction; return its opcode. Raises Unplannable on one that changes state
    outside memory and globals, or that this decoder does not know."""
    op = r.byte()
    if op in _BARE:
        return op
    if op in _ONE_U32:
        r.u32()
    elif op in (0x02, 0x03, 0x04):  # block, loop, if: a block type
        if r.pos < r.end and r.b[r.pos] in _BLOCK_TYPES:
            r.skip(1)
        else:
            r.u32()  # a type index (s33, non-negative)
    elif op in (0x11, 0x13):  # call_indirect, return_call_indirect: type, table
        r.u32()
        r.u32()
    elif op == 0x0E:  # br_table
        for _ in range(r.u32() + 1):
            r.u32()
    elif op == 0x1C:  # select with types
        for _ in range(r.u32()):
            if r.byte() not in _ONE_BYTE_TYPES:
                raise Unplannable("select of a reference type")
    elif 0x28 <= op <= 0x3E:
        _memarg(r)
    elif op in (0x41, 0x42):
        r.u32()  # the sign does not matter for skipping
    elif op == 0x43:
        r.skip(4)
    elif op == 0x44:
        r.skip(8)
    elif op == 0xD0:  # ref.null: a heap type
        if r.byte() not in (0x70, 0x6F):
            raise Unplannable("ref.null of a typed reference")
    elif op == 0xFC:
        sub = r.u32()
        n = _FC.get(sub, None)
        if n is None:
            raise Unplannable(f"instruction 0xFC {sub} changes a table or segment" if sub in _FC
                              else f"unknown instruction 0xFC {sub}")
        for _ in range(n):
            r.u32()
    elif op == 0xFD:
        sub = r.u32()
        if sub in _FD_MEMARG:
            _memarg(r)
        elif sub in _FD_MEMARG_LANE:
            _memarg(r)
            r.skip(1)
        elif sub in _FD_BYTES16:
            r.skip(16)
        elif sub in _FD_LANE:
            r.skip(1)
    elif op == 0x26:
        raise Unplannable("table.set changes a table")
    else:
        raise Unplannable(f"unknown instruction 0x{op:02x}")
    return op


def _memarg(r: _Reader) -> None:
    align = r.u32()
    if align & 0x40:  # multi-memory: a memory index follows
        r.u32()
    r.u32()


def _const_expr(r: _Reader) -> None:
    while _instruction(r) != 0x0B:
        pass


def _code(r: _Reader) -> None:
    for _ in range(r.u32()):
        size = r.u32()
        body = _Reader(r.b, r.pos, r.pos + size)
        r.skip(size)
        for _ in range(body.u32()):  # local declarations: count, type
            body.u32()
            if body.byte() not in _ONE_BYTE_TYPES:
                raise Unplannable("a local of a typed reference")
        while body.pos < body.end:
            _instruction(body)


def plan(wasm: bytes, *, check_code: bool = True) -> tuple[SnapshotPlan, bytes]:
    """(plan, the module with its mutable globals exported) for a core module whose whole
    state is its memory and globals; Unplannable saying why not otherwise. `check_code=False`
    skips decoding the function bodies, the slow part, for bytes already checked."""
    r = _Reader(wasm, 8, len(wasm))
    sections: list[tuple[int, int, int, int]] = []  # (id, header start, content start, end)
    while r.pos < r.end:
        head = r.pos
        sid = r.byte()
        size = r.u32()
        sections.append((sid, head, r.pos, r.pos + size))
        r.skip(size)
    mutable: list[tuple[int, str]] = []
    exports: tuple[int, int, int] | None = None  # (count, start of the entries, end)
    reserved = EXPORT_PREFIX.encode()
    memories = 0
    for sid, _, start, end in sections:
        s = _Reader(wasm, start, end)
        if sid == 2:  # imports
            for _ in range(s.u32()):
                s.name()
                s.name()
                if s.byte() != 0x00:
                    raise Unplannable("imports something other than functions")
                s.u32()
        elif sid == 5:
            memories += s.u32()
        elif sid == 6:  # globals
            for i in range(s.u32()):
                ty, mut = s.byte(), s.byte()
                if mut:
                    if ty not in _NUMERIC:
                        raise Unplannable("a mutable global that is not a number")
                    mutable.append((i, _NUMERIC[ty]))
                _const_expr(s)
        elif sid == 7:
            count = s.u32()
            exports = (count, s.pos, end)
            for _ in range(count):
                if s.name().startswith(reserved):
                    raise Unplannable("already exports a name the snapshot reserves")
                s.byte()
                s.u32()
        elif sid == 10 and check_code:
            if end - start > MAX_CODE_BYTES:
                raise Unplannable(f"code of {end - start} bytes, more than {MAX_CODE_BYTES} to check")
            _code(s)
    if memories > 1:
        raise Unplannable("more than one memory")
    if exports is None:
        raise Unplannable("no exports")
    count, entries, end = exports
    added = [(EXPORT_PREFIX + str(i), t) for i, t in mutable]
    body = bytearray(leb128(count + len(added)) + wasm[entries:end])
    for (name, _), (index, _) in zip(added, mutable):
        raw = name.encode()
        body += leb128(len(raw)) + raw + b"\x03" + leb128(index)  # 3: a global
    out = bytearray(wasm[:8])
    for sid, head, _, end in sections:
        out += (b"\x07" + leb128(len(body)) + body) if sid == 7 else wasm[head:end]
    return SnapshotPlan(tuple(added)), bytes(out)
