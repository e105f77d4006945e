"""Optional OpenTelemetry spans (off by default): a trace per route batch, with its steps and
sinks inside it, and a span per fleet invocation, continuing the caller's trace.

`enable_tracing(node, provider)` turns them on:

- ``iotwasm.route`` — one batch of a route, from its lane taking it to its sinks confirming
  it: route, namespace, messages in, delivered, dead letters.
- ``iotwasm.batch`` — one call into a deployment (a step of the route, or an invocation),
  a child of the batch's span: deployment, namespace, revision, messages, outputs, dead letters
  and the kinds of their errors.
- ``iotwasm.sink`` — a sink taking the batch and confirming it (an uplink's acknowledgements
  included), a child of the batch's span: sink, messages, failures.
- ``iotwasm.invoke`` — a fleet invocation answered by this node (kind server), the child of
  the caller's span when the request carried W3C trace context (``traceparent``); the
  deployment's ``iotwasm.batch`` is its child. `iotwasm fleet invoke` sends that context.

The pipeline knows nothing of OpenTelemetry: it calls the hooks set here (`RouteRunner.trace`,
`DeploymentHandle.trace`, `Node.invoke_trace`), which are None unless tracing is on, so a node
without tracing pays one attribute check per batch. Step calls run on lane threads, so the
batch's span is attached there as the current context for the length of the call.
"""

from __future__ import annotations

from collections import Counter

from ..errors import ConfigError
from ..node.node import Node


def _otel():
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise ConfigError("tracing needs the OpenTelemetry packages: pip install 'iotwasm[otel]'") from None
    return context, trace, SpanKind, Status, StatusCode, TraceContextTextMapPropagator


class RouteTracer:
    """`pipeline.route.BatchTrace` on an OpenTelemetry tracer."""

    def __init__(self, node: Node, tracer):
        self.node = node
        self.tracer = tracer
        self._context, self._trace, self._kind, self._status, self._code, _ = _otel()

    def batch(self, route: str, messages: int):
        rec = self.node.routes.get(route)
        attrs = {"iotwasm.route": route, "iotwasm.messages": messages}
        if rec is not None:
            attrs["iotwasm.namespace"] = rec.manifest.metadata.namespace
        # a batch is a trace of its own: a root span (messages from a bus carry no context)
        return self.tracer.start_span("iotwasm.route", context=self._context.Context(), attributes=attrs)

    def enter(self, span):
        return self._context.attach(self._trace.set_span_in_context(span))

    def leave(self, token) -> None:
        self._context.detach(token)

    def sink(self, span, sink: str, messages: int):
        return self.tracer.start_span("iotwasm.sink", context=self._trace.set_span_in_context(span),
                                      attributes={"iotwasm.sink": sink, "iotwasm.messages": messages})

    def end_sink(self, span, failures: int) -> None:
        span.set_attribute("iotwasm.failures", failures)
        if failures:
            span.set_status(self._status(self._code.ERROR, f"{failures} message(s) not taken"))
        span.end()

    def end(self, span, delivered: int, dead: int) -> None:
        span.set_attribute("iotwasm.delivered", delivered)
        span.set_attribute("iotwasm.dead_letters", dead)
        span.end()


class InvokeTracer:
    """Spans of the fleet invocations a node answers."""

    def __init__(self, node: Node, tracer):
        self.node = node
        self.tracer = tracer
        self._context, self._trace, self._kind, self._status, self._code, propagator = _otel()
        self._propagator = propagator()

    def invocation(self, deployment: str, headers: dict):
        parent = self._propagator.extract({k.lower(): v for k, v in headers.items()})
        return self.tracer.start_span("iotwasm.invoke", context=parent, kind=self._kind.SERVER,
                                      attributes={"iotwasm.deployment": deployment,
                                                  "iotwasm.node": self.node.config.name})

    def enter(self, span):
        return self._context.attach(self._trace.set_span_in_context(span))

    def leave(self, token) -> None:
        self._context.detach(token)

    def end(self, span, *, outputs: int = 0, dead_letters: int = 0, error: str | None = None) -> None:
        span.set_attribute("iotwasm.outputs", outputs)
        span.set_attribute("iotwasm.dead_letters", dead_letters)
        if error is not None:
            span.set_status(self._status(self._code.ERROR, error))
        span.end()


def enable_tracing(node: Node, provider=None):
    """Trace `node`'s route batches, deployment calls and invocations; returns the tracer."""
    _, trace, _, Status, StatusCode, _ = _otel()
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
    node.route_trace = RouteTracer(node, tracer)
    node.invoke_trace = InvokeTracer(node, tracer)
    for rec in node.deployments.values():
        rec.handle.trace = traced
    for route in node.routes.values():
        route.runner.trace = node.route_trace
    return tracer


def console_provider():
    """A provider printing spans to stderr, for `iotwasm up --otel` without a collector."""
    import sys

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    return provider
