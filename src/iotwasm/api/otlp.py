"""Traces and metrics out of the node over OTLP/HTTP (protobuf), when configured.

Configured by `iotwasm up --otlp URL` (the collector's base URL: traces go to URL/v1/traces,
metrics to URL/v1/metrics) or by the standard variables, which the exporters read themselves:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (both), ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (one each), ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` set to ``none`` turn either off. Only
the http/protobuf protocol is spoken; asking for gRPC is an error at start, not silence.

Nothing of OpenTelemetry is imported unless it is configured. Spans: `api.tracing`. Metrics are
observed at export time from the counters the node keeps anyway (routes' received, delivered,
dead letters and queue depth; deployments' messages, outputs and dead letters; the outbox
backlog), so they cost nothing per message: the exporter's thread reads them every
``OTEL_METRIC_EXPORT_INTERVAL`` (60 s by default).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..node.node import Node

log = logging.getLogger("iotwasm.otlp")

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
HTTP_PROTOBUF = "http/protobuf"


def _off(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() == "none"


def wanted(url: str | None) -> tuple[bool, bool]:
    """(traces, metrics): which signals to export, from `--otlp` and the environment."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False, False
    env = os.environ.get
    traces = bool(url or env(ENDPOINT) or env(TRACES_ENDPOINT)) and not _off("OTEL_TRACES_EXPORTER")
    metrics = bool(url or env(ENDPOINT) or env(METRICS_ENDPOINT)) and not _off("OTEL_METRICS_EXPORTER")
    return traces, metrics


def _check_protocol(signal: str) -> None:
    for var in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(var)
        if value:
            if value.strip() != HTTP_PROTOBUF:
                raise ConfigError(f"{var}={value}: this node exports OTLP over {HTTP_PROTOBUF} only")
            return


@dataclass
class Telemetry:
    """The providers exporting a node's traces and metrics; `shutdown` flushes both (it blocks:
    call it off the event loop)."""

    tracer_provider: Any | None
    meter_provider: Any | None

    def shutdown(self) -> None:
        for p in (self.tracer_provider, self.meter_provider):
            if p is not None:
                try:
                    p.shutdown()
                except Exception as e:  # noqa: BLE001 - a collector gone away must not fail the stop
                    log.warning("OTLP export at shutdown failed: %s", e)


def start(node: Node, url: str | None) -> Telemetry | None:
    """Export `node`'s spans and metrics as configured; None when nothing is."""
    traces, metrics = wanted(url)
    if not (traces or metrics):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        raise ConfigError("OTLP export needs the OpenTelemetry packages: pip install 'iotwasm[otel]'") from None
    base = url.rstrip("/") if url else None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "iotwasm",
                                "service.instance.id": node.config.name})
    tracer_provider = meter_provider = None
    if traces:
        _check_protocol("TRACES")
        tracer_provider = _tracer_provider(resource, f"{base}/v1/traces" if base else None)
        from .tracing import enable_tracing

        enable_tracing(node, tracer_provider)
    if metrics:
        _check_protocol("METRICS")
        meter_provider = _meter_provider(node, resource, f"{base}/v1/metrics" if base else None)
    return Telemetry(tracer_provider, meter_provider)


def client_tracer(url: str | None):
    """(provider, tracer) for a command that calls into the fleet (`iotwasm fleet invoke`),
    exporting its span like a node does; None when OTLP is not configured. The caller shuts
    the provider down (which sends the span) before it exits."""
    traces, _ = wanted(url)
    if not traces:
        return None
    _check_protocol("TRACES")
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "iotwasm-cli"})
    provider = _tracer_provider(resource, f"{url.rstrip('/')}/v1/traces" if url else None)
    return provider, provider.get_tracer("iotwasm")


def _exporter_module(name: str):
    try:
        import importlib

        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{name}")
    except ImportError:
        raise ConfigError("OTLP export needs opentelemetry-exporter-otlp-proto-http: "
                          "pip install 'iotwasm[otel]'") from None


def _tracer_provider(resource, endpoint: str | None):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = _exporter_module("trace_exporter").OTLPSpanExporter(endpoint=endpoint)
    provider = TracerProvider(resource=resource)
    # batched and sent by the processor's own thread: a slow collector never holds up a lane
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _meter_provider(node: Node, resource, endpoint: str | None):
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter = _exporter_module("metric_exporter").OTLPMetricExporter(endpoint=endpoint)
    provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)])
    meter = provider.get_meter("iotwasm")

    def items(d: dict) -> list:
        # read on the exporter's thread while the loop may add or remove entries: retry a copy
        for _ in range(5):
            try:
                return list(d.items())
            except RuntimeError:
                continue
        return []

    def route_values(field: str):
        def observe(options: CallbackOptions):
            for name, rec in items(node.routes):
                value = rec.runner.depth() if field == "queued" else getattr(rec.runner.stats, field)
                yield Observation(value, {"route": name, "namespace": rec.manifest.metadata.namespace})
        return observe

    def deployment_values(field: str):
        def observe(options: CallbackOptions):
            for name, rec in items(node.deployments):
                totals = rec.handle.current.stats().totals()
                yield Observation(totals.get(field, 0), {"deployment": name,
                                                         "namespace": rec.manifest.metadata.namespace})
        return observe

    for field, what in (("received", "messages a route took from its source"),
                        ("delivered", "messages a route's sinks took"),
                        ("dead_letters", "messages a route kept as dead letters")):
        meter.create_observable_counter(f"iotwasm.route.{field}", [route_values(field)], unit="{message}",
                                        description=what)
    meter.create_observable_gauge("iotwasm.route.queued", [route_values("queued")], unit="{message}",
                                  description="messages waiting in a route's queue")
    for field, what in (("messages", "messages a deployment's running instances took"),
                        ("outputs", "outputs a deployment's running instances gave"),
                        ("dead_letters", "dead letters of a deployment's running instances")):
        meter.create_observable_counter(f"iotwasm.deployment.{field}", [deployment_values(field)],
                                        unit="{message}", description=what)

    def backlog(options: CallbackOptions):
        yield Observation(node.outbox.backlog())
    meter.create_observable_gauge("iotwasm.outbox.backlog", [backlog], unit="{message}",
                                  description="messages waiting in the outbox for their broker")
    return provider
