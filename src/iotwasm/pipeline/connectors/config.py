"""Configuration models of the built-in connectors (the manifest schema is made of them).

They live with the connectors rather than with the manifests so a connector and the shape of
its configuration are defined in one place; node/manifest_route.py assembles them into a route's
``source`` and ``sinks``. Every model forbids unknown fields, so a typo is a problem naming the
field rather than a setting silently ignored.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def plain_identifier(v: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", v):
        raise ValueError("must be a plain identifier")
    return v


class MqttEndpoint(Strict):
    url: str | None = Field(None, description="mqtt://host:port[?version=5]; default: the node's broker")
    topic: str
    qos: Literal[0, 1] = 1
    retain: bool = False
    queue: str | None = Field(None, description="source only: a shared subscription "
                              "($share/<queue>/<topic>): the nodes of one group share the messages")


class NatsEndpoint(Strict):
    url: str | None = None
    subject: str
    jetstream: bool = False
    durable: str | None = None
    queue: str | None = None


class HttpSource(Strict):
    path: str = "/ingest"
    topic: str = Field("http/ingest", description="topic template filled from the query parameters")


class SensorsSource(Strict):
    devices: int = Field(20, ge=1, le=100_000)
    rate: float = Field(1.0, gt=0, description="readings per second per device and sensor")
    sensors: list[Literal["temperature", "humidity", "vibration", "pressure"]] = ["temperature", "humidity"]
    anomaly_rate: float = Field(0.01, alias="anomalyRate", ge=0, le=1)
    corrupt_rate: float = Field(0.005, alias="corruptRate", ge=0, le=1,
                                description="share of frames corrupted on purpose (a decoder's dead letters)")
    heat_wave: float = Field(0.0, alias="heatWave", ge=0, le=100,
                             description="°C a heat wave adds to temperatures at its peak (0: none)")
    heat_wave_every: float = Field(7200.0, alias="heatWaveEvery", gt=0,
                                   description="simulated seconds between a device's heat waves")
    heat_wave_lasting: float = Field(1800.0, alias="heatWaveLasting", gt=0,
                                     description="simulated seconds a heat wave lasts")
    seed: int = 7


class BusEndpoint(Strict):
    topic: str


class StoreSink(Strict):
    table: str = "messages"

    @field_validator("table")
    @classmethod
    def _ident(cls, v: str) -> str:
        return plain_identifier(v)


class WebhookSink(Strict):
    url: str
    timeout: str = "5s"


class LogSink(Strict):
    level: Literal["debug", "info", "warning"] = "info"


class ConnectorRef(Strict):
    """A connector that is not built in (a Python distribution's ``iotwasm.connectors`` entry
    point): its kind, and its configuration, validated by the connector's own model."""

    kind: str = Field(description="the entry point's name, e.g. acme-serial")
    config: dict = Field(default_factory=dict)
