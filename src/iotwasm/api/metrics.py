"""Prometheus metrics of one node, read from the node's own counters at scrape time.

Nothing on the message path changes for metrics: the collector reads the containers' and
routes' statistics (which the node keeps anyway) when Prometheus scrapes, so an idle scraper
costs nothing and the hot path has no extra locks. Message latency through a route is exported
as a cumulative histogram and as quantiles over the route's last 10,000 messages.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ..breaker import STATE_VALUE
from ..node.node import Node
from ..node.traffic import unwrapped
from ..pipeline.split import SplitStep
from .policy import namespace_of
from .security import Principal

#: upper bounds (ms) of the message latency histogram
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class LatencyHistograms:
    """Cumulative per-route histograms of message latency (arrival → delivered to all sinks).

    Routes keep the latencies of their last 10,000 delivered messages; each scrape folds in
    the ones delivered since the previous scrape, so the histogram is exact as long as at most
    10,000 messages per route are delivered between two scrapes; beyond that the oldest of them
    are no longer known and are left out (counted in `missed`)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = {}
        self.missed: dict[str, int] = {}

    def update(self, route: str, delivered: int, window) -> None:
        new = delivered - self._seen.get(route, 0)
        if new < 0:  # the route was recreated: start again
            self._buckets.pop(route, None), self._sum.pop(route, None)
            new = delivered
        self._seen[route] = delivered
        if new == 0:
            return
        recent = list(window)[-new:] if new <= len(window) else list(window)
        self.missed[route] = self.missed.get(route, 0) + new - len(recent)
        counts = self._buckets.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
        for v in recent:
            for i, bound in enumerate(LATENCY_BUCKETS):
                if v <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
        self._sum[route] = self._sum.get(route, 0.0) + sum(recent)

    def family(self, namespaces: dict[str, str]) -> HistogramMetricFamily:
        h = HistogramMetricFamily("iotwasm_route_latency_ms", "Message latency from arrival in the route to "
                                  "delivery to all its sinks (ms)", labels=["route", "namespace"])
        for route, counts in self._buckets.items():
            if route not in namespaces:
                continue
            cumulative, acc = [], 0
            for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts):
                acc += n
                cumulative.append((bound, acc))
            h.add_metric([route, namespaces[route]], cumulative, self._sum.get(route, 0.0))
        return h


class NodeCollector:
    """The node's metrics as `who` may see them: a tenant token gets the series of its own
    namespace's deployments, routes and rules, and of the node only whether it is ready and
    since when it runs (backlogs, stored dead letters and API counters are everyone's
    together); a token without tenant (or `who` None) gets everything."""

    def __init__(self, node: Node, extra=None, histograms: LatencyHistograms | None = None,
                 who: Principal | None = None):
        self.node = node
        self.extra = extra  # callable returning more metric families (API counters)
        self.histograms = histograms
        self.who = who

    def _visible(self, namespace: str) -> bool:
        return self.who is None or self.who.may_see(namespace)

    def collect(self):
        node = self.node
        everything = self.who is None or self.who.tenant is None
        dl = ["deployment", "namespace"]
        c = {k: CounterMetricFamily(f"iotwasm_deployment_{k}", h, labels=dl) for k, h in (
            ("messages", "Messages handed to the deployment"),
            ("outputs", "Messages the deployment emitted"),
            ("dead_letters", "Messages the deployment dead-lettered"),
            ("fuel_consumed", "Fuel its instances consumed"),
            ("restarts", "Container restarts"),
            ("rollbacks", "Automatic rollbacks of updates"),
            ("scale_ups", "Instances made on demand (every instance busy, or none)"),
            ("scale_downs", "Idle instances closed after their cool-down"),
            ("prewarmed", "Spare instances made ahead of demand (prewarm)"),
            ("evictions", "Idle instances evicted for another deployment under the node's instance budget"))}
        errors = CounterMetricFamily("iotwasm_deployment_errors", "Errors by kind", labels=[*dl, "kind"])
        instances = GaugeMetricFamily("iotwasm_deployment_instances", "Running instances", labels=dl)
        pages = GaugeMetricFamily("iotwasm_deployment_memory_pages", "Linear memory pages of all instances",
                                  labels=dl)
        up = GaugeMetricFamily("iotwasm_deployment_running", "1 when the deployment is running", labels=dl)
        revision = GaugeMetricFamily("iotwasm_deployment_revision", "Revision serving", labels=dl)
        for name, rec in list(node.deployments.items()):
            if not self._visible(rec.manifest.metadata.namespace):
                continue
            lv = [name, rec.manifest.metadata.namespace]
            st = rec.handle.current.stats()
            tot = st.totals()
            c["messages"].add_metric(lv, tot.get("messages", 0))
            c["outputs"].add_metric(lv, tot.get("outputs", 0))
            c["dead_letters"].add_metric(lv, tot.get("dead_letters", 0))
            c["fuel_consumed"].add_metric(lv, tot.get("fuel_used", 0))
            c["restarts"].add_metric(lv, st.restarts)
            c["rollbacks"].add_metric(lv, rec.handle.rollbacks)
            for k in ("scale_ups", "scale_downs", "prewarmed", "evictions"):
                c[k].add_metric(lv, getattr(st.scaling, k))
            for kind, n in tot["errors"].items():
                errors.add_metric([*lv, kind], n)
            instances.add_metric(lv, len(st.instances))
            pages.add_metric(lv, sum(i.memory_pages for i in st.instances))
            up.add_metric(lv, 1 if st.state == "running" else 0)
            revision.add_metric(lv, rec.handle.revision)
        yield from c.values()
        yield from (errors, instances, pages, up, revision)

        rl = ["route", "namespace"]
        r = {k: CounterMetricFamily(f"iotwasm_route_{k}", h, labels=rl) for k, h in (
            ("received", "Messages the route's source accepted"),
            ("delivered", "Messages delivered to all sinks"),
            ("dropped", "Messages dropped by queue overflow"),
            ("dead_letters", "Messages dead-lettered along the route"),
            ("acl_denied", "Outputs refused by topic ACLs"),
            ("batches", "Batches run"))}
        depth = GaugeMetricFamily("iotwasm_route_queue_depth", "Messages waiting in the route", labels=rl)
        backlog = GaugeMetricFamily("iotwasm_route_sink_backlog", "Store-and-forward backlog of the route's sinks",
                                    labels=rl)
        latency = GaugeMetricFamily("iotwasm_route_latency_recent_ms",
                                    "Message latency quantiles over the route's last 10,000 messages",
                                    labels=[*rl, "quantile"])
        sl = [*rl, "sink"]
        circuit = GaugeMetricFamily("iotwasm_sink_circuit_state", "Circuit breaker of an uplink sink: "
                                    "0 closed, 1 half-open, 2 open", labels=sl)
        opened = CounterMetricFamily("iotwasm_sink_circuit_opened", "Times the sink's breaker opened", labels=sl)
        refused = CounterMetricFamily("iotwasm_sink_circuit_rejected", "Calls the sink's open breaker refused",
                                      labels=sl)
        split = CounterMetricFamily("iotwasm_route_split_messages", "Messages a split step gave each "
                                    "deployment (fallback: the canary's share the stable one took)",
                                    labels=[*rl, "step", "deployment"])
        health = GaugeMetricFamily("iotwasm_connector_healthy", "1 when a route's source or sink has no problem "
                                   "(docs/connectors.md)", labels=[*rl, "role", "index", "kind"])
        events = CounterMetricFamily("iotwasm_connector_events", "Counters a route's source or sink reports",
                                     labels=[*rl, "role", "index", "kind", "counter"])
        for name, rec in list(node.routes.items()):
            s = rec.runner.stats
            if self.histograms is not None:   # every route, whoever scrapes: the histograms are shared
                self.histograms.update(name, s.delivered, s.latencies_ms)
            if not self._visible(rec.manifest.metadata.namespace):
                continue
            lv = [name, rec.manifest.metadata.namespace]
            for k in r:
                r[k].add_metric(lv, getattr(s, k))
            depth.add_metric(lv, rec.runner.depth())
            backlog.add_metric(lv, sum(getattr(k, "backlog", lambda: 0)() for k in rec.sinks))
            for q in (0.5, 0.9, 0.99):
                latency.add_metric([*lv, str(q)], s.percentile(q))
            for sink in rec.sinks:
                br = getattr(unwrapped(sink), "breaker", None)
                if br is not None:
                    circuit.add_metric([*lv, sink.name], STATE_VALUE[br.state])
                    opened.add_metric([*lv, sink.name], br.opened)
                    refused.add_metric([*lv, sink.name], br.rejected)
            for step in map(unwrapped, rec.runner.steps):
                if isinstance(step, SplitStep):
                    for dep, n in step.stats.items():
                        split.add_metric([*lv, step.name, dep], n)
            conn = rec.connectors()
            for role, i, st in [("source", 0, conn["source"]), *(("sink", i, k) for i, k in enumerate(conn["sinks"]))]:
                cl = [*lv, role, str(i), st["kind"]]
                health.add_metric(cl, 1 if st["health"] == "ok" else 0)
                for counter, n in st["counters"].items():
                    events.add_metric([*cl, counter], n)
        yield from r.values()
        yield from (depth, backlog, latency, circuit, opened, refused, split, health, events)
        if self.histograms is not None:
            yield self.histograms.family({n: rec.manifest.metadata.namespace for n, rec in list(node.routes.items())
                                          if self._visible(rec.manifest.metadata.namespace)})

        yield from self._rules(node)

        g = GaugeMetricFamily("iotwasm_node_ready", "1 when manifests are reconciled and brokers connected")
        g.add_metric([], 1 if readiness(node)["ready"] else 0)
        yield g
        g = GaugeMetricFamily("iotwasm_node_uptime_seconds", "Seconds since the node started")
        g.add_metric([], time.time() - node.started)
        yield g
        if not everything:
            return
        g = GaugeMetricFamily("iotwasm_node_outbox_backlog", "Messages kept for uplinks not yet acknowledged")
        g.add_metric([], node.outbox.backlog())
        yield g
        g = CounterMetricFamily("iotwasm_node_dead_letters_stored", "Dead letters kept in the node database")
        g.add_metric([], node.state.dead_letter_count())
        yield g
        g = CounterMetricFamily("iotwasm_guest_log_lines_suppressed", "Guest log lines refused by the rate limit")
        g.add_metric([], node.guest_logs.suppressed_total)
        yield g
        if self.extra:
            yield from self.extra()


    def _rules(self, node: Node):
        """Per rule: what it saw, matched, emitted, which evaluations failed, late data."""
        if node.rules is None:
            return
        rl = ["rule", "namespace"]
        c = {k: CounterMetricFamily(f"iotwasm_rule_{k}", h, labels=rl) for k, h in (
            ("received", "Messages offered to the rule"),
            ("matched", "Messages that passed the rule's WHERE"),
            ("emitted", "Results the rule emitted"),
            ("errors", "Evaluations that failed (type errors, WASM function traps or limits)"),
            ("udf_errors", "Evaluations failed by a WASM function"),
            ("late", "Messages older than the watermark allowed"),
            ("decode_errors", "Messages whose payload could not be decoded"))}
        enabled = GaugeMetricFamily("iotwasm_rule_enabled", "1 when the rule is enabled", labels=rl)
        windows = GaugeMetricFamily("iotwasm_rule_open_windows", "Windows (groups) open", labels=rl)
        alerts = GaugeMetricFamily("iotwasm_rule_alerts_pending",
                                   "Alerts kept for delivery (escalation queue)", labels=rl)
        manifests = node.rules.manifests
        for name, st in node.rules.status().items():
            m = manifests.get(name)
            ns = m.metadata.namespace if m is not None else "default"
            if not self._visible(ns):
                continue
            lv = [name, ns]
            for k, fam in c.items():
                fam.add_metric(lv, st.get(k, 0) or 0)
            enabled.add_metric(lv, 1 if st.get("enabled") else 0)
            windows.add_metric(lv, st.get("open_windows", 0) or 0)
            if "alerts" in st:
                alerts.add_metric(lv, st["alerts"].get("pending", 0))
        yield from c.values()
        yield from (enabled, windows, alerts)


#: what a reconcile problem is about: every problem the node reports starts "Kind name: "
SUBJECT = re.compile(r"^(Deployment|Route|Rule) ([a-z0-9][-a-z0-9]*): ")


def subject_of(problem: str) -> tuple[str, str] | None:
    """(kind, name) of the object a reconcile problem is about, None for the node's own."""
    m = SUBJECT.match(problem)
    return (m.group(1), m.group(2)) if m else None


@dataclass(frozen=True)
class Reason:
    """Why a node is not ready: `detail` for those who may see everything, `summary` for
    anyone, and the `namespace` whose object it is about (None: the node's own)."""

    summary: str
    detail: str
    namespace: str | None = None


def readiness_reasons(node: Node) -> list[Reason]:
    """Everything that keeps `node` from being ready: starting, each reconcile problem, its
    manifest files, its buses, and work held because the storage fails (each such reason names
    the file and the error; only callers who may see everything get the detail)."""
    reasons = []
    if not node.ready:
        reasons.append(Reason("node starting", "node starting"))
    for p in node.last_problems:
        subject = subject_of(p)
        reasons.append(Reason("manifest problems", p, namespace_of(node, *subject) if subject else None))
    if node.last_manifest_error:
        reasons.append(Reason("manifest problems", node.last_manifest_error))
    buses = {"node": node.bus, **node._buses}
    disconnected = [name for name, b in buses.items() if b is not None and not b.connected]
    if disconnected:
        reasons.append(Reason("bus not connected", f"bus not connected: {', '.join(disconnected)}"))
    reasons += [Reason("storage error", p) for p in node.storage_problems()]
    return reasons


def readiness(node: Node, who: Principal | None = None, *, anonymous: bool = False) -> dict:
    """Ready = started, the last reconcile left no problem, every bus is connected, and no
    work is held because the storage fails.

    ``{"ready", "reasons"}``: whether the node is ready is anyone's to know; why is told as far
    as the caller may see. A token without tenant (or the node itself, `who` None) gets every
    reason in full, a tenant token the problems of its own namespace and a summary of the
    rest, an anonymous probe (`anonymous`) only the summaries."""
    reasons = readiness_reasons(node)
    ready = not reasons
    if anonymous:
        return {"ready": ready, "reasons": list(dict.fromkeys(r.summary for r in reasons))}
    if who is not None and who.tenant is not None:
        shown = [r for r in reasons if r.namespace == who.tenant]
        others = [r for r in reasons if r.namespace != who.tenant]
        out = _grouped(shown)
        out += [s + (" (of other namespaces)" if s == "manifest problems" else "")
                for s in dict.fromkeys(r.summary for r in others)]
        return {"ready": ready, "reasons": out}
    return {"ready": ready, "reasons": _grouped(reasons)}


def _grouped(reasons: list[Reason]) -> list[str]:
    """The reasons' details with the manifest problems in one line: their count and the first."""
    problems = [r.detail for r in reasons if r.summary == "manifest problems"]
    out = []
    for r in reasons:
        if r.summary != "manifest problems":
            out.append(r.detail)
        elif problems:
            out.append(f"{len(problems)} manifest problem(s): {problems[0]}")
            problems = []
    return out


def exposition(node: Node, extra=None, histograms: LatencyHistograms | None = None,
               who: Principal | None = None) -> bytes:
    """The text exposition as `who` may see it; call it on the node's event loop (the routes'
    windows change there)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node, extra, histograms, who))
    if who is None or who.tenant is None:
        # the process as a whole (CPU, memory, descriptors) and the garbage collector's
        # collections per generation: every tenant's work together, so not for a tenant
        ProcessCollector(registry=reg)
        GCCollector(registry=reg)
    return generate_latest(reg)
