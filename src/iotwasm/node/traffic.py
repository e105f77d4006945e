"""A route manifest's traffic policy turned into pipeline parts: breakers and retries for its
sinks, splits for its steps (docs/node.md, "Circuit breakers, retries and traffic splits")."""

from __future__ import annotations

import random

from ..backoff import Backoff
from ..breaker import CircuitBreaker
from ..engine.limits import parse_duration_ms
from ..errors import ConfigError
from ..pipeline.split import Match, SplitStep
from .manifests import RouteSpec, Sink

UPLINKS = ("mqtt", "nats", "bus", "webhook")


def breaker_for(name: str, sink: Sink) -> CircuitBreaker | None:
    b = sink.circuit_breaker
    if sink.type not in UPLINKS or not b.enabled:
        return None
    return CircuitBreaker(name, failures=b.failures, failure_rate=b.failure_rate, window=b.window,
                          open_for=parse_duration_ms(b.open_for) / 1000,
                          max_open_for=parse_duration_ms(b.max_open_for) / 1000)


def retry_for(sink: Sink) -> tuple[int, Backoff | None]:
    """(further attempts, backoff between them) of a sink's `retry`."""
    r = sink.retry
    if r is None:
        return 0, None
    return r.attempts - 1, Backoff(parse_duration_ms(r.backoff) / 1000, parse_duration_ms(r.max_backoff) / 1000)


def split_steps(spec: RouteSpec, steps: list, deployments: dict) -> list:
    """`steps` (deployment handles, in route order) with each split step wrapped."""
    out = []
    for name, step in zip(spec.steps, steps):
        sp = spec.split.get(name)
        if sp is None:
            out.append(step)
            continue
        rec = deployments.get(sp.deployment)
        if rec is None:
            raise ConfigError(f"split of step {name!r}: {sp.deployment!r} is not a deployment on this node")
        m = sp.match
        out.append(SplitStep(step, rec.handle, weight=sp.weight,
                             match=Match(m.topic, m.field, m.equals) if m is not None else None,
                             rng=random.Random(sp.seed)))
    return out
