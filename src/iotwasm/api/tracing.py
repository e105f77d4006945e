"""Optional OpenTelemetry spans, one per batch and deployment (off by default).

`enable_tracing(node, provider)` makes every deployment's batches run inside a span
``iotwasm.batch`` with the deployment, namespace, revision, message, output and dead-letter
counts and the kinds of errors. Nothing is exported unless the provider has an exporter; the
node pays for spans only when tracing is on (one attribute check per batch otherwise).
"""

from __future__ import annotations

from collections import Counter

from ..errors import ConfigError
from ..node.node import Node


def enable_tracing(node: Node, provider=None):
    """Trace every batch of `node`'s deployments; returns the tracer used."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
    except ImportError:
        raise ConfigError("tracing needs the OpenTelemetry packages: pip install 'iotwasm[otel]'") from None
    tracer = (provider or trace.get_tracer_provider()).get_tracer("iotwasm")

    def traced(handle, messages, process):
        with tracer.start_as_current_span("iotwasm.batch") as span:
            rec = node.deployments.get(handle.name)
            span.set_attribute("iotwasm.deployment", handle.name)
            if rec is not None:
                span.set_attribute("iotwasm.namespace", rec.manifest.metadata.namespace)
            span.set_attribute("iotwasm.revision", handle.revision)
            span.set_attribute("iotwasm.messages", len(messages))
            try:
                result = process(messages)
            except Exception as e:
                span.record_exception(e)
                span.set_status(Status(StatusCode.ERROR, str(e)))
                raise
            span.set_attribute("iotwasm.outputs", len(result.outputs))
            span.set_attribute("iotwasm.dead_letters", len(result.dead_letters))
            if result.dead_letters:
                kinds = Counter(getattr(d.error, "kind", "error") for d in result.dead_letters)
                span.set_attribute("iotwasm.error_kinds", sorted(kinds))
            return result

    node.batch_trace = traced
    for rec in node.deployments.values():
        rec.handle.trace = traced
    return tracer


def console_provider():
    """A provider printing spans to stderr, for `iotwasm up --otel` without a collector."""
    import sys

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    return provider
