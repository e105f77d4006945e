"""Modbus TCP source against pymodbus's own server on free ports: a register map decoded per
type, byte and word order and scale; one message per device per poll; an unreachable device
reported while the others go on; a device stopped and restarted misses polls that are
counted, never invented."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from iotwasm.pipeline.connectors.modbus import ModbusRegister, decode, plan_reads

from brokers import free_port
from nodesite import started, wait_for, write


class Plc:
    """A pymodbus server (unit 1) on a free port; `stop` and `start` again keep its data."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        blocks = dict(hr=ModbusSequentialDataBlock(1, [0] * 300), ir=ModbusSequentialDataBlock(1, [0] * 300),
                      co=ModbusSequentialDataBlock(1, [False] * 300), di=ModbusSequentialDataBlock(1, [False] * 300))
        self.context = ModbusServerContext(devices={1: ModbusDeviceContext(**blocks)})
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        self.server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        await self.server.shutdown()
        self.server = None

    async def write(self, address: int, words: list[int], coils: dict[int, bool] | None = None) -> None:
        """Set registers (and coils) the way a PLC program would be seen: over the protocol."""
        c = AsyncModbusTcpClient("127.0.0.1", port=self.port, retries=0, reconnect_delay=0)
        assert await c.connect()
        try:
            assert not (await c.write_registers(address, words, device_id=1)).isError()
            for a, v in (coils or {}).items():
                assert not (await c.write_coil(a, v, device_id=1)).isError()
        finally:
            c.close()


def words_of(fmt: str, value, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """The registers a device holds for `value`, written independently of the decoder."""
    raw = struct.pack(">" + fmt, value)
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    return [int.from_bytes(w, "big" if byte_order == "big" else "little") for w in words]


@pytest.mark.parametrize("typ,fmt,value", [("int16", "h", -1234), ("uint16", "H", 54321), ("int32", "i", -70000),
                                           ("uint32", "I", 3_000_000_000), ("float32", "f", 21.5)])
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_decode_every_type_and_order(typ, fmt, value, byte_order, word_order):
    reg = ModbusRegister(name="v", address=0, type=typ, byteOrder=byte_order, wordOrder=word_order)
    assert decode(reg, words_of(fmt, value, byte_order, word_order)) == value
    scaled = ModbusRegister(name="v", address=0, type=typ, byteOrder=byte_order, wordOrder=word_order,
                            scale=0.1, offset=-5)
    assert decode(scaled, words_of(fmt, value, byte_order, word_order)) == pytest.approx(value * 0.1 - 5)


def test_reads_are_merged_within_the_protocol_limits():
    regs = [ModbusRegister(name=f"r{i}", address=i, type="uint16") for i in range(130)]
    regs += [ModbusRegister(name="far", address=1000, type="float32"),
             ModbusRegister(name="c1", table="coil", address=3), ModbusRegister(name="c2", table="coil", address=9)]
    plan = [(t, start, count, len(rs)) for t, start, count, rs in plan_reads(regs)]
    assert plan == [("holding", 0, 125, 125), ("holding", 125, 5, 5), ("holding", 1000, 2, 1), ("coil", 3, 7, 2)]


def manifest(devices: list[tuple[str, int]], interval: str = "50ms") -> str:
    regs = """
        - {name: temperature, address: 0, type: float32}
        - {name: pressure, address: 2, type: int32, wordOrder: little}
        - {name: level, address: 4, type: int16, byteOrder: little, scale: 0.5}
        - {name: count, table: input, address: 10, type: uint16}
        - {name: running, table: coil, address: 7}"""
    devs = "".join(f"""
      - name: {name}
        host: 127.0.0.1
        port: {port}
        registers:{regs}""" for name, port in devices)
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: plc}}
spec:
  source:
    modbus:
      interval: {interval}
      timeout: 300ms
      topic: "plant/{{device}}/registers"
      devices:{devs}
  sinks: [{{store: {{table: polls}}}}]
"""


def rows(node, device: str) -> list[dict]:
    return [r["payload"] for r in node.store.query("polls", limit=100_000) if r["payload"]["device"] == device]


def test_polls_devices_into_messages_and_reports_one_that_is_down(tmp_path: Path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()

    async def main():
        a, b = Plc(), Plc()
        await a.start()
        await b.start()
        await a.write(0, words_of("f", 21.5) + words_of("i", -70000, word_order="little")
                      + words_of("h", -300, byte_order="little"), coils={7: True})
        await b.write(0, words_of("f", -3.25) + words_of("i", 5, word_order="little")
                      + words_of("h", 40, byte_order="little"))
        dead = free_port()   # nothing listens there
        write(mdir, "plc.yaml", manifest([("press1", a.port), ("press2", b.port), ("ghost", dead)]))
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: len(rows(node, "press1")) >= 5 and len(rows(node, "press2")) >= 5,
                           what="five polls of each device that answers")
            first = rows(node, "press1")[-1]   # query is newest first
            assert {k: v for k, v in first.items() if k not in ("seq", "ts")} == {
                "device": "press1", "temperature": 21.5, "pressure": -70000, "level": -150.0, "count": 0,
                "running": True}
            second = rows(node, "press2")[-1]
            assert (second["temperature"], second["pressure"], second["level"], second["running"]) == (-3.25, 5, 20.0, False)
            topics = {r["topic"] for r in node.store.query("polls", limit=100_000)}
            assert topics == {"plant/press1/registers", "plant/press2/registers"}
            assert rows(node, "ghost") == []
            status = node.routes["plc"].connectors()["source"]
            assert status["kind"] == "modbus" and status["health"] == "degraded"
            assert status["problem"].startswith(f"device ghost (127.0.0.1:{dead}) unreachable")
            assert status["devices"]["ghost"]["missed_polls"] >= 5
            assert status["devices"]["press1"]["problem"] is None
        finally:
            await node.shutdown()
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_device_restarted_mid_run_misses_polls_that_are_counted_not_invented(tmp_path: Path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()

    async def main():
        a, b = Plc(), Plc()
        await a.start()
        await b.start()
        write(mdir, "plc.yaml", manifest([("press1", a.port), ("press2", b.port)]))
        node = await started(tmp_path, mdir)
        source = None
        try:
            await wait_for(lambda: len(rows(node, "press2")) >= 3, what="press2 polled")
            source = node.routes["plc"].source
            await b.stop()
            dev = {d.cfg.name: d for d in source.devices}
            await wait_for(lambda: dev["press2"].missed >= 3, what="press2's polls missed while it is down")
            during = len(rows(node, "press1"))
            await wait_for(lambda: len(rows(node, "press1")) >= during + 3, what="press1 polled meanwhile")
            assert node.routes["plc"].connectors()["source"]["health"] == "degraded"
            b2 = Plc(b.port)
            b2.context = b.context     # the same PLC back on its port, with its data
            await b2.start()
            missed = dev["press2"].missed
            await wait_for(lambda: dev["press2"].problem is None and len(rows(node, "press2")) >= 3 + 3,
                           what="press2 polled again after its restart")
            await node.routes["plc"].source.stop()   # no more polls: compare what was counted
            await node.routes["plc"].runner.drain(5.0)
            got = sorted(r["seq"] for r in rows(node, "press2"))
            d2 = dev["press2"]
            assert len(got) == len(set(got)), "a poll delivered twice"
            assert len(got) + d2.missed == d2.polls, "every poll is a message or a counted miss"
            assert d2.missed >= missed >= 3
            gaps = sorted(set(range(1, d2.polls + 1)) - set(got))
            assert len(gaps) == d2.missed    # the missed polls are the holes in seq, nothing filled in
            assert node.routes["plc"].connectors()["source"]["health"] == "ok"
            await b2.stop()
        finally:
            await node.shutdown()
            await a.stop()

    asyncio.run(main())


def test_bad_register_type_and_unknown_table_are_one_line_problems(tmp_path: Path):
    from iotwasm.node.manifests import ManifestError, parse_documents

    text = manifest([("press1", 1502)]).replace("type: int32", "type: int24")
    with pytest.raises(ManifestError) as e:
        parse_documents(text, "plc.yaml")
    assert e.value.problems == ["plc.yaml#1 (Route plc) spec.source.modbus.devices[0].registers[1].type: Input should "
                                "be 'int16', 'uint16', 'int32', 'uint32', 'float32' or 'bool'"]
    text = manifest([("press1", 1502)]).replace("{name: running, table: coil, address: 7}",
                                                "{name: running, table: coil, address: 7, type: float32}")
    with pytest.raises(ManifestError) as e:
        parse_documents(text, "plc.yaml")
    assert e.value.problems == ["plc.yaml#1 (Route plc) spec.source.modbus.devices[0].registers[4]: register running: "
                                "type float32 does not fit table coil (coils and discrete inputs are bool, registers "
                                "are not)"]


def test_an_edited_route_keeps_its_poller_and_loses_no_poll(tmp_path: Path):
    """A route edit that leaves the source alone (here: another table) keeps the same poller,
    pointed at the new route: the polls go on, every one a message in one table or the other."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()

    async def main():
        a = Plc()
        await a.start()
        write(mdir, "plc.yaml", manifest([("press1", a.port)]))
        node = await started(tmp_path, mdir)
        try:
            await wait_for(lambda: len(rows(node, "press1")) >= 3, what="polls into the first table")
            poller = node.routes["plc"].source
            write(mdir, "plc.yaml", manifest([("press1", a.port)]).replace("table: polls", "table: polls2"))
            assert await node.sync() == []
            assert node.routes["plc"].source is poller
            await wait_for(lambda: node.store.count("polls2") >= 3, what="polls into the new table")
            await poller.stop()
            await node.routes["plc"].runner.drain(5.0)
            seqs = [r["payload"]["seq"] for t in ("polls", "polls2") for r in node.store.query(t, limit=100_000)]
            assert sorted(seqs) == list(range(1, poller.devices[0].polls + 1))
        finally:
            await node.shutdown()
            await a.stop()

    asyncio.run(main())
