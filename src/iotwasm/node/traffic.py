"""A route manifest's traffic policy turned into pipeline parts: breakers and retries for its
sinks, splits for its steps (docs/node.md, "Circuit breakers, retries and traffic splits")."""

from __future__ import annotations

import random
from typing import Callable

from ..backoff import Backoff
from ..breaker import CircuitBreaker
from ..engine.limits import parse_duration_ms
from ..errors import ConfigError
from ..pipeline.faults import Faults, FaultySink, FaultyStep
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


def split_steps(spec: RouteSpec, steps: list, deployments: dict,
                on_event: Callable[[str, str], None] | None = None) -> list:
    """`steps` (deployment handles, in route order) with each split step wrapped; a canary's
    health gate reports through `on_event(kind, message)` (from a worker thread)."""
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
        g = sp.health_gate
        out.append(SplitStep(step, rec.handle, weight=sp.weight,
                             match=Match(m.topic, m.field, m.equals) if m is not None else None,
                             rng=random.Random(sp.seed),
                             gate=(g.messages, g.max_trap_rate) if g is not None else None,
                             on_event=on_event))
    return out


def with_faults(spec: RouteSpec, steps: list, sinks: list) -> tuple[list, list, list[str]]:
    """`steps` and `sinks` with the route's injected faults in front; and what was injected,
    one line each (for the node's event)."""
    steps, sinks, what = list(steps), list(sinks), []
    for f in spec.faults:
        faults = Faults(delay_s=parse_duration_ms(f.delay) / 1000, delay_rate=f.delay_percent / 100,
                        fail_rate=f.fail_percent / 100, seed=f.seed)
        if f.step is not None:
            k = spec.steps.index(f.step)
            steps[k] = FaultyStep(steps[k], faults)
            what.append(f"step {f.step}: {faults.describe()}")
        elif f.sink is not None:   # one of the two, checked with the manifest
            sinks[f.sink] = FaultySink(sinks[f.sink], faults)
            what.append(f"sink {sinks[f.sink].name}: {faults.describe()}")
    return steps, sinks, what


def unwrapped(part):
    """A step or sink without the fault injection in front of it."""
    return part.inner if isinstance(part, (FaultyStep, FaultySink)) else part


def traffic_view(runner, sinks: list) -> dict:
    """A route's breakers (by sink), splits (by step) and injected faults, for `describe`."""
    out: dict = {}
    breakers = {k.name: unwrapped(k).breaker.describe() for k in sinks
                if getattr(unwrapped(k), "breaker", None) is not None}
    if breakers:
        out["breakers"] = breakers
    splits = {s.name: unwrapped(s).describe() for s in runner.steps if isinstance(unwrapped(s), SplitStep)}
    if splits:
        out["splits"] = splits
    faults = {f"{'step' if isinstance(p, FaultyStep) else 'sink'} {p.name}": p.describe()
              for p in [*runner.steps, *sinks] if isinstance(p, (FaultyStep, FaultySink))}
    if faults:
        out["faults"] = faults
    return out
