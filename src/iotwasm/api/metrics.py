"""Prometheus metrics of one node, read from the node's own counters at scrape time.

Nothing on the message path changes for metrics: the collector reads the containers' and
routes' statistics (which the node keeps anyway) when Prometheus scrapes, so an idle scraper
costs nothing and the hot path has no extra locks. Batch latency is exported as quantiles over
each route's last 10,000 batches (the window the route keeps).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..node.node import Node


class NodeCollector:
    def __init__(self, node: Node, extra=None):
        self.node = node
        self.extra = extra  # callable returning more metric families (API counters)

    def collect(self):
        node = self.node
        dl = ["deployment", "namespace"]
        c = {k: CounterMetricFamily(f"iotwasm_deployment_{k}", h, labels=dl) for k, h in (
            ("messages", "Messages handed to the deployment"),
            ("outputs", "Messages the deployment emitted"),
            ("dead_letters", "Messages the deployment dead-lettered"),
            ("fuel_consumed", "Fuel its instances consumed"),
            ("restarts", "Container restarts"),
            ("rollbacks", "Automatic rollbacks of updates"))}
        errors = CounterMetricFamily("iotwasm_deployment_errors", "Errors by kind", labels=[*dl, "kind"])
        instances = GaugeMetricFamily("iotwasm_deployment_instances", "Running instances", labels=dl)
        pages = GaugeMetricFamily("iotwasm_deployment_memory_pages", "Linear memory pages of all instances",
                                  labels=dl)
        up = GaugeMetricFamily("iotwasm_deployment_running", "1 when the deployment is running", labels=dl)
        revision = GaugeMetricFamily("iotwasm_deployment_revision", "Revision serving", labels=dl)
        for name, rec in list(node.deployments.items()):
            lv = [name, rec.manifest.metadata.namespace]
            st = rec.handle.current.stats()
            tot = st.totals()
            c["messages"].add_metric(lv, tot.get("messages", 0))
            c["outputs"].add_metric(lv, tot.get("outputs", 0))
            c["dead_letters"].add_metric(lv, tot.get("dead_letters", 0))
            c["fuel_consumed"].add_metric(lv, tot.get("fuel_used", 0))
            c["restarts"].add_metric(lv, st.restarts)
            c["rollbacks"].add_metric(lv, rec.handle.rollbacks)
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
        latency = GaugeMetricFamily("iotwasm_route_batch_latency_ms",
                                    "Batch latency quantiles over the last 10,000 batches",
                                    labels=[*rl, "quantile"])
        for name, rec in list(node.routes.items()):
            lv = [name, rec.manifest.metadata.namespace]
            s = rec.runner.stats
            for k in r:
                r[k].add_metric(lv, getattr(s, k))
            depth.add_metric(lv, rec.runner.depth())
            backlog.add_metric(lv, sum(getattr(k, "backlog", lambda: 0)() for k in rec.sinks))
            for q in (0.5, 0.9, 0.99):
                latency.add_metric([*lv, str(q)], s.percentile(q))
        yield from r.values()
        yield from (depth, backlog, latency)

        g = GaugeMetricFamily("iotwasm_node_outbox_backlog", "Messages kept for uplinks not yet acknowledged")
        g.add_metric([], node.outbox.backlog())
        yield g
        g = GaugeMetricFamily("iotwasm_node_ready", "1 when manifests are reconciled and brokers connected")
        g.add_metric([], 1 if readiness(node)["ready"] else 0)
        yield g
        g = GaugeMetricFamily("iotwasm_node_uptime_seconds", "Seconds since the node started")
        g.add_metric([], time.time() - node.started)
        yield g
        g = CounterMetricFamily("iotwasm_node_dead_letters_stored", "Dead letters kept in the node database")
        g.add_metric([], node.state.dead_letter_count())
        yield g
        g = CounterMetricFamily("iotwasm_guest_log_lines_suppressed", "Guest log lines refused by the rate limit")
        g.add_metric([], node.guest_logs.suppressed_total)
        yield g
        if self.extra:
            yield from self.extra()


def readiness(node: Node) -> dict:
    """Ready = started, the last reconcile left no problem, and every bus is connected."""
    buses = {"node": node.bus, **node._buses}
    disconnected = [name for name, b in buses.items() if b is not None and not b.connected]
    problems = list(node.last_problems)
    if node.last_manifest_error:
        problems.append(node.last_manifest_error)
    reasons = []
    if not node.ready:
        reasons.append("node starting")
    if problems:
        reasons.append(f"{len(problems)} manifest problem(s): {problems[0]}")
    if disconnected:
        reasons.append(f"bus not connected: {', '.join(disconnected)}")
    return {"ready": not reasons, "reasons": reasons}


def exposition(node: Node, extra=None) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node, extra))
    return generate_latest(reg)
