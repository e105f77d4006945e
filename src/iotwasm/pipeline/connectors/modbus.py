"""Modbus TCP source: poll registers and coils of PLCs at an interval (pymodbus, imported when
a route uses the kind).

Each device has a register map; a poll reads each device's map (contiguous addresses of one
table in as few requests as the protocol allows) and turns it into one JSON message per
device, on the topic template filled with ``{device}``::

    {"device": "press1", "seq": 17, "ts": 1733450000123, "temperature": 21.5, "running": true}

Devices are polled concurrently and independently: one that does not answer (refused, timed
out, an exception response) misses that poll — counted per device and reported as the
source's problem — while the others go on; it is reconnected at the next poll. Missed polls are
reported, never invented: no message is made for a device that did not answer, and ``seq``
counts the device's polls, so a gap shows how many were missed.

Backpressure: a poll offers its messages to the route and waits while the route's queue is
full; a poll that falls due meanwhile is skipped and counted (``overruns``), never queued up.
Acknowledgement: none — Modbus has no delivery acknowledgement; a message queued in the route
when the node dies is lost, and the next poll reads the current values again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...engine.limits import parse_duration_ms
from ...message import Message
from ...supervise import supervise
from ..templates import TopicTemplate
from .base import Connector, cancel_and_wait, registry, require
from .config import Strict, plain_identifier

log = logging.getLogger("iotwasm.connectors.modbus")

#: the most registers (and bits) one read may ask for (Modbus application protocol 1.1b3, 6.3/6.1)
MAX_REGISTERS = 125
MAX_BITS = 2000
#: addresses not in the map that a read may span to merge two ranges into one request
MAX_GAP = 8
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bool": 1}
FORMAT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
RESERVED = {"device", "seq", "ts"}


class ModbusRegister(Strict):
    name: str
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "bool"] | None = Field(
        None, description="default: uint16 for registers, bool for coils and discrete inputs")
    byte_order: Literal["big", "little"] = Field("big", alias="byteOrder",
                                                 description="order of the two bytes in each register")
    word_order: Literal["big", "little"] = Field("big", alias="wordOrder",
                                                 description="big: the first register holds the high word")
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        plain_identifier(v)
        if v in RESERVED:
            raise ValueError(f"{v!r} is reserved for the message's own field")
        return v

    @property
    def kind(self) -> str:
        """The type, its default filled in (the validator did; this says so to a type checker)."""
        return self.type or ("bool" if self.table in ("coil", "discrete") else "uint16")

    @model_validator(mode="after")
    def _type(self) -> "ModbusRegister":
        bits = self.table in ("coil", "discrete")
        if self.type is None:
            self.type = "bool" if bits else "uint16"
        elif bits != (self.type == "bool"):
            raise ValueError(f"register {self.name}: type {self.type} does not fit table {self.table} "
                             "(coils and discrete inputs are bool, registers are not)")
        if self.address + WIDTH[self.kind] > 65536:
            raise ValueError(f"register {self.name}: {self.type} at {self.address} ends past address 65535")
        return self


class ModbusDevice(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255, description="the unit (device) id")
    registers: list[ModbusRegister] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "ModbusDevice":
        seen: set[str] = set()
        for r in self.registers:
            if r.name in seen:
                raise ValueError(f"device {self.name}: register name {r.name!r} is used twice")
            seen.add(r.name)
        return self


class ModbusSource(Strict):
    interval: str = Field("1s", description="time between polls, e.g. 500ms")
    timeout: str = Field("1s", description="how long a device may take to connect or answer")
    topic: str = Field("modbus/{device}", description="topic template; {device} is the device's name")
    devices: list[ModbusDevice] = Field(min_length=1)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        extra = set(re.findall(r"{([^}]*)}", v)) - {"device"}
        if extra:
            raise ValueError(f"only {{device}} can be filled in here (not {', '.join(sorted(extra))})")
        return v

    @field_validator("interval", "timeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        if parse_duration_ms(v) <= 0:
            raise ValueError("must be longer than 0")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "ModbusSource":
        names = [d.name for d in self.devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"device name(s) used twice: {', '.join(sorted(dup))}")
        return self


def plan_reads(registers: list[ModbusRegister]) -> list[tuple[str, int, int, list[ModbusRegister]]]:
    """Group a map into requests: (table, first address, count, registers in it), merging
    neighbours of one table while the request stays within the protocol's limit."""
    out: list[tuple[str, int, int, list[ModbusRegister]]] = []
    for table in ("holding", "input", "coil", "discrete"):
        regs = sorted((r for r in registers if r.table == table), key=lambda r: r.address)
        limit = MAX_BITS if table in ("coil", "discrete") else MAX_REGISTERS
        cur: list = []
        start = end = 0
        for r in regs:
            r_end = r.address + WIDTH[r.kind]
            if cur and r.address - end <= MAX_GAP and max(end, r_end) - start <= limit:
                cur.append(r)
                end = max(end, r_end)
                continue
            if cur:
                out.append((table, start, end - start, cur))
            cur, start, end = [r], r.address, r_end
        if cur:
            out.append((table, start, end - start, cur))
    return out


def decoder(reg: ModbusRegister):
    """A function (words or bits, index) → the register's value: made once per map entry, so
    a poll only indexes and, for 32-bit values or little-endian registers, unpacks."""
    kind = reg.kind
    if kind == "bool":
        return lambda data, at: bool(data[at])
    if reg.byte_order == "big" and kind in ("uint16", "int16"):
        raw = (lambda data, at: data[at]) if kind == "uint16" else \
            (lambda data, at: ((data[at] & 0xFFFF) ^ 0x8000) - 0x8000)
    else:
        each = struct.Struct(">HH" if reg.byte_order == "big" else "<HH")
        one = struct.Struct(">H" if reg.byte_order == "big" else "<H")
        value = struct.Struct(">" + FORMAT[kind])
        if WIDTH[kind] == 1:
            raw = lambda data, at: value.unpack(one.pack(data[at]))[0]  # noqa: E731
        elif reg.word_order == "big":
            raw = lambda data, at: value.unpack(each.pack(data[at], data[at + 1]))[0]  # noqa: E731
        else:
            raw = lambda data, at: value.unpack(each.pack(data[at + 1], data[at]))[0]  # noqa: E731
    if reg.scale == 1.0 and reg.offset == 0.0:
        return raw
    scale, offset = reg.scale, reg.offset
    return lambda data, at: raw(data, at) * scale + offset


def decode(reg: ModbusRegister, words: list[int] | list[bool]) -> int | float | bool:
    """One register map entry's value from the words (or bits) read at its address."""
    return decoder(reg)(words, 0)


class _Device:
    """One device's connection, counters and last problem."""

    def __init__(self, cfg: ModbusDevice):
        self.cfg = cfg
        self.plan = [(table, start, count, [(r.name, r.address - start, decoder(r)) for r in regs])
                     for table, start, count, regs in plan_reads(cfg.registers)]
        self.client: Any = None
        self.seq = 0
        self.polls = 0
        self.missed = 0
        self.problem: str | None = None

    async def read(self, timeout: float) -> dict:
        from pymodbus.client import AsyncModbusTcpClient

        if self.client is None or not self.client.connected:
            if self.client is not None:
                self.client.close()
            # reconnecting is ours (at the next poll): pymodbus's own would race it
            self.client = AsyncModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=timeout,
                                               retries=0, reconnect_delay=0)
            if not await asyncio.wait_for(self.client.connect(), timeout):
                raise ConnectionError(f"cannot connect to {self.cfg.host}:{self.cfg.port}")
        values: dict = {}
        c = self.client
        calls = {"holding": c.read_holding_registers, "input": c.read_input_registers,
                 "coil": c.read_coils, "discrete": c.read_discrete_inputs}
        for table, start, count, regs in self.plan:
            # the client's own timeout bounds the request (no task per request on the loop)
            rr = await calls[table](start, count=count, device_id=self.cfg.unit)
            if rr.isError():
                raise ConnectionError(f"{table} {start}..{start + count - 1}: exception response {rr}")
            data = rr.bits if table in ("coil", "discrete") else rr.registers
            for name, at, decode_at in regs:
                values[name] = decode_at(data, at)
        return values

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class ModbusPoller:
    """The running source: one task polling every device at the interval."""

    def __init__(self, cfg: ModbusSource, runner, route: str):
        self.cfg = cfg
        self.runner = runner
        self.route = route
        self.template = TopicTemplate(cfg.topic)
        self.interval = parse_duration_ms(cfg.interval) / 1000
        self.timeout = parse_duration_ms(cfg.timeout) / 1000
        self.devices = [_Device(d) for d in cfg.devices]
        self.messages = 0
        self.overruns = 0
        self._task: asyncio.Task | None = None
        self._paused = False

    async def start(self) -> None:
        self._task = supervise(f"modbus source of route {self.route}", self._run, log=log)

    async def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while True:
            if not self._paused:
                await self.poll_once()
            n += 1
            due = start + n * self.interval
            now = time.monotonic()
            if now > due:   # the poll (or the route's backpressure) took longer than the interval
                skipped = int((now - due) / self.interval) + 1
                self.overruns += skipped
                n += skipped
                due = start + n * self.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def poll_once(self) -> None:
        """Poll every device once (concurrently) and offer one message per device answered."""
        results = await asyncio.gather(*(self._poll(d) for d in self.devices))
        for dev, values in zip(self.devices, results):
            if values is None:
                continue
            body = {"device": dev.cfg.name, "seq": dev.seq, "ts": int(time.time() * 1000), **values}
            topic = self.template.fill({"device": dev.cfg.name}, b"")
            await self.runner.offer(Message(topic, json.dumps(body).encode()), {"device": dev.cfg.name})
            self.messages += 1

    async def _poll(self, dev: _Device) -> dict | None:
        dev.seq += 1
        dev.polls += 1
        try:
            values = await dev.read(self.timeout)
        except Exception as e:  # noqa: BLE001 - any failure of one device is that device's problem
            dev.missed += 1
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            problem = f"device {dev.cfg.name} ({dev.cfg.host}:{dev.cfg.port}) unreachable: {why}"
            if problem != dev.problem:
                log.warning("route %s: modbus %s", self.route, problem)
            dev.problem = problem
            dev.close()
            return None
        if dev.problem is not None:
            log.info("route %s: modbus device %s answers again", self.route, dev.cfg.name)
            dev.problem = None
        return values

    def status(self) -> dict:
        problems = [d.problem for d in self.devices if d.problem]
        health = "ok" if not problems else ("down" if len(problems) == len(self.devices) else "degraded")
        return {"health": health, "problem": "; ".join(problems) or None,
                "counters": {"polls": sum(d.polls for d in self.devices), "messages": self.messages,
                             "missed_polls": sum(d.missed for d in self.devices), "overruns": self.overruns},
                "devices": {d.cfg.name: {"polls": d.polls, "missed_polls": d.missed, "problem": d.problem}
                            for d in self.devices}}

    def retarget(self, runner) -> None:
        self.runner = runner

    def pause(self) -> None:
        self._paused = True

    async def stop(self, grace: float = 5.0) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for d in self.devices:
            d.close()

    remove = stop


async def _build(ctx, cfg: ModbusSource, runner) -> ModbusPoller:
    require(MODBUS)
    return ModbusPoller(cfg, runner, ctx.route)


MODBUS = registry.register(Connector(
    "modbus", "source", ModbusSource, _build,
    "Polled, no acknowledgement: a full route queue delays the poll and polls falling due "
    "meanwhile are skipped and counted (overruns); an unreachable device misses its polls "
    "(counted, reported as the problem), never invented; queued messages are lost if the node "
    "dies, and the next poll reads the current values.",
    requires=(("pymodbus", "pymodbus"),), extra="modbus",
    pattern=lambda cfg: cfg.topic))
