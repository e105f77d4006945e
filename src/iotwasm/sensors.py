"""Simulated IoT devices: readings with noise, drift, daily cycles, heat waves, anomalies and
corrupt frames.

Devices speak a packed binary frame (the format `examples/modules/frame_decoder.c` decodes),
because that is what real constrained sensors send, and decoding it is a typical job for a
module. The simulation is deterministic for a given seed, so tests and demos repeat.

Frame, 12 bytes, little-endian:
    u8 magic 0xA5 | u8 version 1 | u16 device_id | u16 seq | u8 sensor_type | u8 flags |
    i16 value×100 | u8 battery % | u8 CRC-8 (poly 0x07, init 0) over the first 11 bytes
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, field

MAGIC = 0xA5
VERSION = 1
SENSOR_TYPES = {"temperature": 1, "humidity": 2, "vibration": 3, "pressure": 4}
SENSOR_NAMES = {v: k for k, v in SENSOR_TYPES.items()}
_FRAME = struct.Struct("<BBHHBBhB")

#: baseline, daily amplitude, noise (σ), anomaly spike size, per sensor type
PROFILES = {
    "temperature": (22.0, 6.0, 0.3, 25.0),
    "humidity": (60.0, 15.0, 1.5, 35.0),
    "vibration": (2.0, 0.5, 0.4, 20.0),
    "pressure": (1013.0, 4.0, 0.8, 60.0),
}


def crc8(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_frame(device_id: int, seq: int, sensor: str, value: float, battery: int,
                 flags: int = 0) -> bytes:
    raw = _FRAME.pack(MAGIC, VERSION, device_id & 0xFFFF, seq & 0xFFFF, SENSOR_TYPES[sensor],
                      flags, max(-32768, min(32767, round(value * 100))), battery)
    return raw + bytes([crc8(raw)])


def decode_frame(frame: bytes) -> dict:
    """Reference decoder in Python (tests compare the wasm decoder against it)."""
    if len(frame) != 12:
        raise ValueError(f"frame is {len(frame)} bytes, expected 12")
    if crc8(frame[:11]) != frame[11]:
        raise ValueError("bad CRC")
    magic, version, dev, seq, stype, flags, value, battery = _FRAME.unpack(frame[:11])
    if magic != MAGIC or version != VERSION:
        raise ValueError("bad magic or version")
    return {"device": f"dev-{dev:04d}", "seq": seq, "sensor": SENSOR_NAMES.get(stype, "unknown"),
            "value": value / 100, "battery": battery}


@dataclass
class Device:
    device_id: int
    sensors: tuple[str, ...] = ("temperature", "humidity")
    drift_per_hour: float = 0.0
    seq: int = 0
    battery: float = 100.0
    phase: float = 0.0


@dataclass
class SensorField:
    """A set of devices producing readings on a simulated clock."""

    devices: int = 20
    sensors: tuple[str, ...] = ("temperature", "humidity")
    anomaly_rate: float = 0.01
    corrupt_rate: float = 0.005
    seed: int = 7
    #: heat waves: every `heat_wave_every_s` simulated seconds each device's temperature rises
    #: by up to `heat_wave_c` °C (a half sine over `heat_wave_s`), starting at a phase of its
    #: own; 0 °C means none. A sustained rise, unlike an anomaly's single spike, is what a
    #: windowed average (the demo's heat rule) is there to catch.
    heat_wave_c: float = 0.0
    heat_wave_every_s: float = 7200.0
    heat_wave_s: float = 1800.0
    _rng: random.Random = field(init=False, repr=False)
    _devices: list[Device] = field(init=False, repr=False)
    _wave_at: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._devices = [Device(i + 1, self.sensors, self._rng.uniform(-0.2, 0.2),
                                phase=self._rng.uniform(0, 2 * math.pi))
                         for i in range(self.devices)]
        # a generator of its own, so turning heat waves on changes no other reading
        waves = random.Random(self.seed + 1)
        self._wave_at = [waves.uniform(0, self.heat_wave_every_s) for _ in range(self.devices)]

    def heat(self, dev: Device, t_s: float) -> float:
        """The heat wave's rise (°C) for `dev` at simulated time `t_s`; 0 outside waves."""
        if self.heat_wave_c <= 0 or self.heat_wave_s <= 0:
            return 0.0
        into = (t_s - self._wave_at[dev.device_id - 1]) % max(self.heat_wave_every_s, self.heat_wave_s)
        if into >= self.heat_wave_s:
            return 0.0
        return self.heat_wave_c * math.sin(math.pi * into / self.heat_wave_s)

    @staticmethod
    def topic(device_id: int) -> str:
        return f"devices/dev-{device_id:04d}/frame"

    def reading(self, dev: Device, sensor: str, t_s: float) -> float:
        base, amp, noise, spike = PROFILES[sensor]
        value = (base + amp * math.sin(2 * math.pi * t_s / 86400 + dev.phase)
                 + dev.drift_per_hour * t_s / 3600 + self._rng.gauss(0, noise))
        if sensor == "temperature":
            value += self.heat(dev, t_s)
        if self._rng.random() < self.anomaly_rate:
            value += spike * self._rng.choice((-1, 1))
        return value

    def tick(self, t_s: float) -> list[tuple[str, bytes]]:
        """One reading per sensor per device at simulated time t_s: (topic, frame) pairs."""
        out = []
        rng = self._rng
        for dev in self._devices:
            for sensor in dev.sensors:
                dev.seq = (dev.seq + 1) & 0xFFFF
                dev.battery = max(0.0, dev.battery - 0.0005)
                frame = encode_frame(dev.device_id, dev.seq, sensor, self.reading(dev, sensor, t_s),
                                     int(dev.battery))
                if rng.random() < self.corrupt_rate:
                    i = rng.randrange(len(frame))
                    frame = frame[:i] + bytes([frame[i] ^ 0x5A]) + frame[i + 1:]
                out.append((self.topic(dev.device_id), frame))
        return out
