"""A test module that misbehaves on request; the payload says what to do.

ok:*     emits the payload          log:*   logs it, counts it in kv, emits it
loop     spins forever              oom     allocates until memory runs out
deep     recurses until the wasm stack overflows (a trap)
boom     raises an exception (a reject)          binary  emits bytes that are not UTF-8
many:N   emits N outputs, the i-th on topic t/i
"""

import sys

from iotwasm_sdk import emit, handler, kv, log, setup

sys.setrecursionlimit(1_000_000)
HOARD = []


def deep(n):
    return deep(n + 1) + 1


@setup
def start():
    kv.get("calls")  # reads are not effects


@handler
def handle(msg):
    cmd = msg.text
    if cmd.startswith("ok:"):
        return msg
    if cmd.startswith("log:"):
        log.info(cmd)
        kv.set("calls", str(int(kv.get("calls") or "0") + 1))
        return msg
    if cmd == "loop":
        while True:
            pass
    if cmd == "oom":
        while True:
            HOARD.append(bytearray(1 << 20))
    if cmd == "deep":
        return deep(0)
    if cmd == "boom":
        raise KeyError("boom")
    if cmd == "binary":
        return b"\xff\x00\x1e\x1f"
    if cmd.startswith("many:"):
        for i in range(int(cmd[5:])):
            emit(f"{i}", topic=f"t/{i}")
        return None
    raise ValueError(f"unknown command {cmd!r}")
