#!/usr/bin/env python3
"""What the field connectors sustain, against the bare client library doing the same work.

    .venv/bin/python benchmarks/connectors.py [--seconds S] [--repeats R] [--only modbus|opcua|postgres]

* **modbus**: 10 pymodbus servers (another process) with 100 holding registers each, polled as
  fast as they answer (interval 1 ms) by the Modbus source into a route (no steps, a counting
  sink), against a plain pymodbus loop reading the same registers of every device at once and
  making the same JSON message per device.
* **opcua**: an asyncua server (another process) with 1,000 variables rewritten as fast as it
  can, subscribed by the OPC UA source into a route, against a plain asyncua subscription
  whose handler makes the same JSON message.
* **postgres**: 20,000 JSON messages into a table through the PostgreSQL sink (mapping, the
  outbox, batched INSERT transactions of 500), the same without the outbox
  (storeAndForward: false) and with transactions of one row, against
  plain psycopg `executemany` in transactions of 500 rows (no mapping, no outbox).

Messages per second and CPU per message of this process (the servers run in others); medians
of interleaved repeats. PostgreSQL is started from Debian's binaries on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from brokers import free_port  # noqa: E402

import psycopg  # noqa: E402
from asyncua import Client  # noqa: E402
from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from iotwasm.message import Message  # noqa: E402
from iotwasm.pipeline import RouteRunner  # noqa: E402
from iotwasm.pipeline.connectors.modbus import ModbusPoller, ModbusSource  # noqa: E402
from iotwasm.pipeline.connectors.opcua import OpcUaSource, OpcUaSubscriber  # noqa: E402
from iotwasm.pipeline.connectors.postgres import PostgresSink, PostgresTableSink  # noqa: E402
from iotwasm.pipeline.outbox import Outbox  # noqa: E402

DEVICES, REGISTERS, VARIABLES = 10, 100, 1000


class Count:
    """A sink that only counts: what is measured is the source and the route."""

    name = "count"

    def __init__(self):
        self.n = 0

    async def deliver(self, messages, variables):
        self.n += len(messages)
        return []


# --- servers, in another process -----------------------------------------------------------

def _modbus_servers(ports, ready):
    import logging

    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer
    logging.getLogger("pymodbus").setLevel(logging.ERROR)

    async def main():
        for i, port in enumerate(ports):
            ctx = ModbusServerContext(devices={1: ModbusDeviceContext(
                hr=ModbusSequentialDataBlock(1, [(i * 1000 + k) & 0xFFFF for k in range(200)]))})
            await ModbusTcpServer(ctx, address=("127.0.0.1", port)).serve_forever(background=True)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _opcua_server(port, ready, written):
    import logging

    from asyncua import Server, ua
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)

    async def main():
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
        idx = await server.register_namespace("urn:iotwasm:bench")
        obj = await server.nodes.objects.add_object(idx, "Bench")
        nodes = [await obj.add_variable(ua.NodeId(f"v{i}", idx), f"v{i}", 0.0) for i in range(VARIABLES)]
        await server.start()
        ready.set()
        v = 0.0
        while True:
            v += 1.0
            for n in nodes:
                await server.write_attribute_value(n.nodeid, ua.DataValue(ua.Variant(v, ua.VariantType.Double)))
            written.value += len(nodes)
            await asyncio.sleep(0)

    asyncio.run(main())


def _spawn(target, *args):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True) if target is _modbus_servers else \
        ctx.Process(target=target, args=(args[0], ready, args[1]), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError(f"{target.__name__} did not start")
    return proc


# --- measurements --------------------------------------------------------------------------

class Window:
    """The steady-state window of a run: messages counted, wall and CPU time between marks."""

    def start(self, n: int = 0) -> None:
        self.n0, self.t0, self.c0 = n, time.perf_counter(), time.process_time()

    def end(self, n: int) -> tuple[float, float]:
        """(messages/s, CPU µs/message)"""
        t, c, k = time.perf_counter() - self.t0, time.process_time() - self.c0, n - self.n0
        return k / t, c * 1e6 / max(k, 1)


async def _measure(run, seconds: float) -> tuple[float, float]:
    w = Window()
    return await run(seconds, w)


async def modbus_iotwasm(ports, seconds, w):
    regs = [{"name": f"r{k}", "address": k, "type": "uint16"} for k in range(REGISTERS)]
    cfg = ModbusSource(interval="1ms", timeout="2s", topic="bench/{device}",
                       devices=[{"name": f"d{i}", "host": "127.0.0.1", "port": p, "registers": regs}
                                for i, p in enumerate(ports)])
    sink = Count()
    runner = RouteRunner("bench", [], [sink])
    runner.start()
    poller = ModbusPoller(cfg, runner, "bench")
    await poller.poll_once()   # connected before the clock starts
    await runner.drain()
    w.start(sink.n)
    await poller.start()
    await asyncio.sleep(seconds)
    await poller.stop()
    await runner.drain()
    result = w.end(sink.n)
    await runner.stop()
    assert poller.status()["counters"]["missed_polls"] == 0
    return result


async def modbus_plain(ports, seconds, w):
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, retries=0, reconnect_delay=0) for p in ports]
    for c in clients:
        await c.connect()
    n, seq = 0, 0
    w.start()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        seq += 1
        answers = await asyncio.gather(*(c.read_holding_registers(0, count=REGISTERS, device_id=1) for c in clients))
        for i, rr in enumerate(answers):
            raw = struct.pack(f">{REGISTERS}H", *rr.registers)
            values = dict(zip((f"r{k}" for k in range(REGISTERS)), struct.unpack(f">{REGISTERS}H", raw)))
            Message(f"bench/d{i}", json.dumps({"device": f"d{i}", "seq": seq, "ts": int(time.time() * 1000),
                                               **values}).encode())
            n += 1
    result = w.end(n)
    for c in clients:
        c.close()
    return result


async def opcua_iotwasm(url, seconds, w):
    cfg = OpcUaSource(url=url, topic="bench/{node}", samplingInterval="0ms", publishingInterval="50ms",
                      queueSize=1, nodes=[{"name": f"v{i}", "id": f"ns=2;s=v{i}"} for i in range(VARIABLES)])
    sink = Count()
    runner = RouteRunner("bench", [], [sink])
    runner.start()
    sub = OpcUaSubscriber(cfg, runner, "bench")
    await sub.start()
    while sink.n < VARIABLES:      # subscribed: the first values are in
        await asyncio.sleep(0.05)
    w.start(sink.n)
    await asyncio.sleep(seconds)
    result = w.end(sink.n)
    await sub.stop()
    await runner.stop(0)
    return result


async def opcua_plain(url, seconds, w):
    class Handler:
        n = 0

        def datachange_notification(self, node, val, data):
            dv = data.monitored_item.Value
            json.dumps({"node": str(node.nodeid), "value": val, "source_ts": dv.SourceTimestamp}, default=str)
            self.n += 1

    h = Handler()
    client = Client(url)
    await client.connect()
    sub = await client.create_subscription(50, h)
    await sub.subscribe_data_change([client.get_node(f"ns=2;s=v{i}") for i in range(VARIABLES)], queuesize=1,
                                    sampling_interval=0)
    while h.n < VARIABLES:
        await asyncio.sleep(0.05)
    w.start(h.n)
    await asyncio.sleep(seconds)
    result = w.end(h.n)
    await client.disconnect()
    return result


async def postgres_run(pg, kind: str, rows: int):
    pg.sql("TRUNCATE readings")
    msgs = [Message(f"in/d{i % 10}", b'{"device":"d%d","n":%d,"values":{"temp":%d.5}}' % (i % 10, i, i))
            for i in range(rows)]
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "plain executemany":
        async with await psycopg.AsyncConnection.connect(pg.dsn, password=pg.password) as conn:
            data = [(f"d{i % 10}", i, i + 0.5) for i in range(rows)]
            for k in range(0, rows, 500):
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany("INSERT INTO readings (device, n, temp) VALUES (%s, %s, %s)",
                                          data[k:k + 500])
    else:
        batch = 1 if kind == "sink, batch 1" else 500
        cfg = PostgresSink(dsn=pg.dsn, passwordEnv="BENCH_PGPASSWORD", table="readings", batch=batch,
                           columns={"device": "device", "n": "n", "temp": "values.temp"})
        with tempfile.TemporaryDirectory() as d:
            outbox = None if kind == "sink, batch 500, no outbox" else Outbox(Path(d) / "outbox.db")
            sink = PostgresTableSink("bench", cfg, outbox)
            await sink.start()
            for k in range(0, rows, 500):
                await sink.deliver(msgs[k:k + 500], [{}] * len(msgs[k:k + 500]))
            while sink.backlog():
                await asyncio.sleep(0.01)
            await sink.stop()
            if outbox is not None:
                outbox.close()
    t1, c1 = time.perf_counter(), time.process_time()
    assert pg.sql("SELECT count(*) FROM readings")[0][0] == rows
    return rows / (t1 - t0), (c1 - c0) * 1e6 / rows


def table(title, results, baseline):
    base = statistics.median(r[0] for r in results[baseline])
    print(f"\n### {title}\n\n| implementation | msgs/s (median) | CPU µs/msg | vs {baseline} |\n|---|---:|---:|---:|")
    for name, rs in results.items():
        rate = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        print(f"| {name} | {rate:,.0f} | {cpu:,.1f} | {rate / base:.2f}× |")


async def main(args):
    import os

    print(f"benchmarks/connectors.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.seconds:g} s per run, {args.repeats} repeats")
    if args.only in (None, "modbus"):
        ports = [free_port() for _ in range(DEVICES)]
        proc = _spawn(_modbus_servers, ports)
        try:
            res = {"iotwasm modbus source → route": [], "plain pymodbus loop": []}
            for r in range(args.repeats):
                order = list(res) if r % 2 == 0 else list(reversed(res))
                for name in order:
                    fn = modbus_iotwasm if name.startswith("iotwasm") else modbus_plain
                    res[name].append(await _measure(lambda s, w, fn=fn: fn(ports, s, w), args.seconds))
            table(f"Modbus TCP: {DEVICES} devices × {REGISTERS} registers, one message per device per poll",
                  res, "plain pymodbus loop")
        finally:
            proc.kill()
    if args.only in (None, "opcua"):
        port = free_port()
        written = mp.get_context("spawn").Value("q", 0)
        proc = _spawn(_opcua_server, port, written)
        url = f"opc.tcp://127.0.0.1:{port}/bench/"
        try:
            res = {"iotwasm opcua source → route": [], "plain asyncua subscription": []}
            w0, t0 = written.value, time.perf_counter()
            for r in range(args.repeats):
                order = list(res) if r % 2 == 0 else list(reversed(res))
                for name in order:
                    fn = opcua_iotwasm if name.startswith("iotwasm") else opcua_plain
                    res[name].append(await _measure(lambda s, w, fn=fn: fn(url, s, w), args.seconds))
            offered = (written.value - w0) / (time.perf_counter() - t0)
            table(f"OPC UA: {VARIABLES} variables subscribed (the server rewrote ~{offered:,.0f} values/s)",
                  res, "plain asyncua subscription")
        finally:
            proc.kill()
    if args.only in (None, "postgres"):
        from pg import PostgresServer

        pg = PostgresServer()
        pg.start()
        os.environ["BENCH_PGPASSWORD"] = pg.password
        pg.sql("CREATE TABLE readings (id bigserial PRIMARY KEY, device text, n int, temp double precision)")
        try:
            res = {"sink, batch 500": [], "sink, batch 500, no outbox": [], "sink, batch 1": [],
                   "plain executemany": []}
            for r in range(args.repeats):
                for name in (list(res) if r % 2 == 0 else list(reversed(res))):
                    res[name].append(await postgres_run(pg, name, 2000 if name == "sink, batch 1" else 20_000))
            table("PostgreSQL sink: 20,000 JSON messages → rows (2,000 for batch 1)", res, "plain executemany")
        finally:
            pg.close()


if __name__ == "__main__":
    import logging
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)   # a client's teardown logs its publish loop
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["modbus", "opcua", "postgres"])
    asyncio.run(main(ap.parse_args()))
