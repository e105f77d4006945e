"""The built-in kinds on the connector interface: mqtt, nats, bus, http and sensors sources;
mqtt, nats, bus, store, webhook and log sinks."""

from __future__ import annotations

from ...engine.limits import parse_duration_ms
from ...sensors import SensorField
from ..http_ingest import IngestServer
from ..route import RouteRunner
from ..sinks import BusSink, LogSink, StoreSink, WebhookSink
from ..sources import BusSource, SensorSource
from . import config as c
from .base import Connector, registry


def subject_to_topic(subject: str) -> str:
    """Manifests write NATS endpoints as NATS subjects (`in.{device}`, `a.*`, `a.>`); the
    buses speak MQTT-style topics, which NatsBus maps back one-to-one."""
    if "/" in subject:
        return subject  # already topic-style
    return "/".join({"*": "+", ">": "#"}.get(seg, seg) for seg in subject.split("."))


class HttpSource:
    """An http source is a path on the node's ingest server."""

    def __init__(self, server: IngestServer, path: str, topic: str, runner: RouteRunner):
        self.server, self.path, self.topic, self.runner = server, path, topic, runner

    async def start(self) -> None:
        self.server.add(self.path, self.topic, self.runner)

    def retarget(self, runner: RouteRunner) -> None:
        self.server.retarget(self.runner, runner)
        self.runner = runner

    def pause(self) -> None:
        self.server.pause(self.runner)  # 503: clients send again

    async def stop(self, grace: float = 5.0) -> None:
        self.server.pause(self.runner)

    async def remove(self, grace: float = 5.0) -> None:
        self.server.remove(self.runner)


BUS_ACK = ("At-least-once: a message is acknowledged to its broker (MQTT QoS 1 PUBACK, "
           "JetStream ack) only once the route is through with it; a full route queue stops "
           "taking from the connection (backpressure reaches the broker). QoS 0 and core NATS "
           "have no acknowledgement: what is queued when the node dies is lost.")
UPLINK_ACK = ("At-least-once through the outbox (default): a batch is taken once it is on disk "
              "and deleted only when the broker acknowledged it (PUBACK, JetStream ack); an "
              "outage fills the outbox, never the route. Without storeAndForward a failed "
              "publish dead-letters the message.")


async def _mqtt_source(ctx, cfg: c.MqttEndpoint, runner):
    return BusSource(await ctx.bus_for(cfg.url), cfg.topic, runner, qos=cfg.qos, queue=cfg.queue)


async def _bus_source(ctx, cfg: c.BusEndpoint, runner):
    return BusSource(await ctx.bus_for(None), cfg.topic, runner, qos=1)


async def _nats_source(ctx, cfg: c.NatsEndpoint, runner):
    bus = await ctx.bus_for(cfg.url or ctx.broker)
    return BusSource(bus, subject_to_topic(cfg.subject), runner, qos=1 if cfg.jetstream else 0,
                     queue=cfg.queue, durable=cfg.durable)


async def _http_source(ctx, cfg: c.HttpSource, runner):
    return HttpSource(await ctx.ingest_server(), cfg.path, cfg.topic, runner)


async def _sensors_source(ctx, cfg: c.SensorsSource, runner):
    field_ = SensorField(devices=cfg.devices, sensors=tuple(cfg.sensors), anomaly_rate=cfg.anomaly_rate,
                         corrupt_rate=cfg.corrupt_rate, seed=cfg.seed, heat_wave_c=cfg.heat_wave,
                         heat_wave_every_s=cfg.heat_wave_every, heat_wave_s=cfg.heat_wave_lasting)
    return SensorSource(field_, cfg.rate, runner)


async def _mqtt_sink(ctx, cfg: c.MqttEndpoint, name, outbox):
    return BusSink(name, await ctx.bus_for(cfg.url), cfg.topic, qos=cfg.qos, retain=cfg.retain, outbox=outbox,
                   breaker=ctx.breaker)


async def _bus_sink(ctx, cfg: c.BusEndpoint, name, outbox):
    return BusSink(name, await ctx.bus_for(None), cfg.topic, outbox=outbox, breaker=ctx.breaker)


async def _nats_sink(ctx, cfg: c.NatsEndpoint, name, outbox):
    bus = await ctx.bus_for(cfg.url or ctx.broker)
    return BusSink(name, bus, subject_to_topic(cfg.subject), qos=1 if cfg.jetstream else 0, outbox=outbox,
                   breaker=ctx.breaker)


async def _store_sink(ctx, cfg: c.StoreSink, name, outbox):
    return StoreSink(name, ctx.store, cfg.table, ctx.route)


async def _webhook_sink(ctx, cfg: c.WebhookSink, name, outbox):
    return WebhookSink(name, cfg.url, timeout_s=parse_duration_ms(cfg.timeout) / 1000, outbox=outbox,
                       breaker=ctx.breaker, retries=ctx.retries, retry_backoff=ctx.retry_backoff)


async def _log_sink(ctx, cfg: c.LogSink, name, outbox):
    return LogSink(name, cfg.level)


BUILTIN = [
    Connector("mqtt", "source", c.MqttEndpoint, _mqtt_source, BUS_ACK, pattern=lambda cfg: cfg.topic),
    Connector("nats", "source", c.NatsEndpoint, _nats_source, BUS_ACK,
              pattern=lambda cfg: subject_to_topic(cfg.subject)),
    Connector("bus", "source", c.BusEndpoint, _bus_source, BUS_ACK, pattern=lambda cfg: cfg.topic),
    Connector("http", "source", c.HttpSource, _http_source,
              "A request is answered 200 once the route is through with its message (503 when the "
              "route does not take it in time or is paused: the client sends again).",
              pattern=lambda cfg: cfg.topic),
    Connector("sensors", "source", c.SensorsSource, _sensors_source,
              "Simulated: a full route queue delays the next readings; nothing to acknowledge.",
              pattern=lambda cfg: "devices/{device}/frame"),
    Connector("mqtt", "sink", c.MqttEndpoint, _mqtt_sink, UPLINK_ACK),
    Connector("nats", "sink", c.NatsEndpoint, _nats_sink, UPLINK_ACK),
    Connector("bus", "sink", c.BusEndpoint, _bus_sink, UPLINK_ACK),
    Connector("store", "sink", c.StoreSink, _store_sink,
              "A batch is taken once it is committed to the node's SQLite store."),
    Connector("webhook", "sink", c.WebhookSink, _webhook_sink,
              "At-least-once through the outbox: one POST after the other, deleted from the outbox "
              "on a 2xx answer, retried with backoff otherwise."),
    Connector("log", "sink", c.LogSink, _log_sink, "Written to the node's log; nothing to acknowledge."),
]

for _c in BUILTIN:
    registry.register(_c)
