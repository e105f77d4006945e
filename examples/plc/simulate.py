"""Two simulated PLCs (pymodbus servers) whose registers move like a press line's: press1 runs
warm, press2 runs hot enough to trip the overheat rule, and now and then a probe glitch puts
9999 °C in a register (the route's plausibility module drops it)."""

from __future__ import annotations

import asyncio
import math
import random
import struct

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer


def float32(v: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def int32_low_word_first(v: int) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i", v))
    return [lo, hi]


class SimulatedPlc:
    def __init__(self, name: str, port: int, base_temp: float, seed: int):
        self.name, self.port, self.base_temp = name, port, base_temp
        self.rng = random.Random(seed)
        blocks = dict(hr=ModbusSequentialDataBlock(1, [0] * 100), ir=ModbusSequentialDataBlock(1, [0] * 100),
                      co=ModbusSequentialDataBlock(1, [False] * 100), di=ModbusSequentialDataBlock(1, [False] * 100))
        self.server = ModbusTcpServer(ModbusServerContext(devices={1: ModbusDeviceContext(**blocks)}),
                                      address=("127.0.0.1", port))
        self.cycles = 0

    async def start(self) -> None:
        await self.server.serve_forever(background=True)
        self.client = AsyncModbusTcpClient("127.0.0.1", port=self.port, retries=0, reconnect_delay=0)
        if not await self.client.connect():
            raise RuntimeError(f"simulated PLC {self.name} on port {self.port} does not answer")

    async def step(self, t: float) -> None:
        """Write the next values through the protocol, as the PLC program would hold them."""
        temp = self.base_temp + 12 * math.sin(t / 8) + self.rng.uniform(-0.5, 0.5)
        if self.rng.random() < 0.03:
            temp = 9999.0     # the probe's open-circuit value
        self.cycles = (self.cycles + 1) % 65536
        words = (float32(temp) + int32_low_word_first(int(101_325 + 5_000 * math.cos(t / 5)))
                 + [int(500 + 300 * math.sin(t / 13)) & 0xFFFF])
        await self.client.write_registers(0, words, device_id=1)
        await self.client.write_register(10, self.cycles, device_id=1)
        await self.client.write_coil(7, temp < 9000, device_id=1)

    async def stop(self) -> None:
        self.client.close()
        await self.server.shutdown()


async def run_line(plcs: list[SimulatedPlc], period: float = 0.25) -> None:
    t = 0.0
    while True:
        for p in plcs:
            await p.step(t)
        t += period
        await asyncio.sleep(period)
