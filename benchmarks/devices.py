"""What a route's `twin` sink costs against the `store` sink, side by side: the same batches of
device reports (JSON objects of four fields, 1,000 devices, batches of 100) merged into twins
in the node database, and inserted as rows into the local store.

    .venv/bin/python benchmarks/devices.py [--messages 20000]

Prints messages per second of each and the ratio (twin / store). Both write one SQLite
transaction per batch, off the event loop, as a route does; the twin sink also reads each
device's twin and merges the report into it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from iotwasm.message import Message
from iotwasm.node.device_link import DeviceLink, TwinSink
from iotwasm.node.devices import DeviceRegistry
from iotwasm.node.state import NodeState
from iotwasm.pipeline import LocalStore, StoreSink

DEVICES = 1000
BATCH = 100


def batches(n: int) -> list[tuple[list[Message], list[dict]]]:
    rng = random.Random(7)
    out = []
    for start in range(0, n, BATCH):
        msgs, variables = [], []
        for _ in range(min(BATCH, n - start)):
            d = f"d{rng.randrange(DEVICES)}"
            body = {"temp": round(rng.uniform(15, 30), 2), "hum": rng.randrange(100), "fan": rng.randrange(4),
                    "ok": True}
            msgs.append(Message(f"devices/{d}/reported", json.dumps(body).encode()))
            variables.append({"device": d})
        out.append((msgs, variables))
    return out


async def run(sink, work) -> float:
    t0 = time.perf_counter()
    for msgs, variables in work:
        failures = await sink.deliver(msgs, variables)
        assert not failures, failures[:1]
    return time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    n = ap.parse_args().messages
    work = batches(n)
    with tempfile.TemporaryDirectory() as d:
        state = NodeState(Path(d) / "node.db")
        link = DeviceLink(DeviceRegistry(state), lambda *a: None)
        twin = TwinSink("bench/0:twin", link, "default")
        store = LocalStore(Path(d) / "store.db")
        rows = StoreSink("bench/0:store", store, "reports", "bench")
        await run(twin, work[:5]), await run(rows, work[:5])   # warm up (and create the devices)
        t_twin = await run(twin, work)
        t_store = await run(rows, work)
        store.close()
        state.close()
    print(f"{n} reports from {DEVICES} devices in batches of {BATCH}")
    print(f"twin sink:  {n / t_twin:10.0f} msg/s")
    print(f"store sink: {n / t_store:10.0f} msg/s")
    print(f"twin / store: {t_store / t_twin:.2f}× the throughput")


if __name__ == "__main__":
    asyncio.run(main())
