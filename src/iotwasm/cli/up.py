"""`iotwasm up`: run one node in the foreground with live progress in the terminal."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..errors import IotwasmError
from ..node import Node, NodeConfig
from .heap import freeze_heap

ALERT_TABLE = "alerts"
#: seconds between the status lines a node without a live table prints
STATUS_LINE_S = 5.0

log = logging.getLogger("iotwasm.node")


def render(node: Node, started: float) -> Group:
    snap = node.snapshot()
    up = time.monotonic() - started
    routes = Table(title="routes", expand=True)
    for col in ("route", "received", "delivered", "dead letters", "dropped", "queued", "backlog",
                "p50 ms", "p99 ms"):
        routes.add_column(col, justify="left" if col == "route" else "right")
    for name, r in snap["routes"].items():
        routes.add_row(name, f"{r['received']:,}", f"{r['delivered']:,}", f"{r['dead_letters']:,}",
                       f"{r['dropped']:,}", f"{r['queued']:,}", f"{r['backlog']:,}",
                       f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
    deps = Table(title="deployments (WASM containers)", expand=True)
    for col in ("deployment", "state", "rev", "replicas", "messages", "outputs", "errors", "restarts",
                "rollbacks"):
        deps.add_column(col, justify="left" if col in ("deployment", "state") else "right")
    for name, d in snap["deployments"].items():
        errs = ", ".join(f"{k} {v}" for k, v in sorted(d["errors"].items())) or "-"
        style = "green" if d["state"] == "running" else "red"
        deps.add_row(name, f"[{style}]{d['state']}[/]", str(d["revision"]), str(d["replicas"]),
                     f"{d.get('messages', 0):,}", f"{d.get('outputs', 0):,}", errs, str(d["restarts"]),
                     str(d["rollbacks"]))
    parts: list[RenderableType] = [Panel(f"node [bold]{snap['node']}[/] · up {up:.0f}s · data {node.config.data_dir} · "
                   f"bus {node.config.broker or 'in-process'} · outbox backlog {snap['outbox_backlog']:,}",
                   title="iotwasm"), routes, deps]
    dead = dead_letter_lines(node)
    if dead:
        parts.append(Panel(Text("\n".join(dead)), title="dead letters: where and why (latest error)"))
    try:
        alerts = node.store.query(ALERT_TABLE, limit=5)
    except Exception:
        alerts = []
    if alerts:
        lines = [f"{a['topic']}: {json.dumps(a['payload'])}" for a in alerts]
        parts.append(Panel(Text("\n".join(lines)[:2000]), title="latest alerts (from the local store)"))
    if snap["manifest_error"]:
        parts.append(Panel(Text(snap["manifest_error"]), title="[red]manifest problems", border_style="red"))
    if snap["storage"]:
        parts.append(Panel(Text("\n".join(snap["storage"])), title="[red]held: storage failing", border_style="red"))
    return Group(*parts)


def dead_letter_lines(node: Node) -> list[str]:
    """Per route and place (step, sink) with dead letters: how many and the latest error; for
    a simulated sensors source that corrupts frames on purpose, that it does, so the demo's
    dead letters are not mistaken for a fault of the node."""
    lines = []
    for name, rec in sorted(node.routes.items()):
        stats = rec.runner.stats
        for where, n in sorted(stats.dead_by.items()):
            error = stats.last_dead.get(where, (0, ""))[1]
            lines.append(f"{name} at {where}: {n:,}, latest: {error[:160]}")
        src = rec.manifest.spec.source
        if stats.dead_by and src.sensors is not None and src.sensors.corrupt_rate > 0:
            lines.append(f"  ({name}'s simulated sensors corrupt {src.sensors.corrupt_rate:.1%} of their frames "
                         f"on purpose (corruptRate): the decoder rejects them, and the route keeps each as a "
                         f"dead letter to inspect or replay)")
    return lines


async def run_node(config: NodeConfig, console: Console, seconds: float = 0.0, api=None,
                   otel: bool = False, fleet: dict | None = None, controller: bool = False,
                   otlp: str | None = None, own_process: bool = False) -> Node:
    """Run `config`'s node until it stops; with `fleet` ({url, labels, taints, memory,
    instances}) it joins that fleet, and with `controller` it is also a candidate controller
    (leader election: only the lease holder of the fleet places work). `own_process`: the
    process is this node's alone (`iotwasm up`), so what is built before it runs is frozen
    out of the garbage collector's sight (cli/heap.py)."""
    node = Node(config)
    from ..api import otlp as otlp_export

    telemetry = otlp_export.start(node, otlp)   # None unless --otlp or OTEL_EXPORTER_OTLP_* say where
    if telemetry is not None:
        signals = [k for k, p in (("traces", telemetry.tracer_provider), ("metrics", telemetry.meter_provider))
                   if p is not None]
        console.print(f"OTLP export: {' and '.join(signals)} to {otlp or 'the OTEL_EXPORTER_OTLP_* endpoints'}",
                      highlight=False, soft_wrap=True)
    elif otel:
        try:
            from opentelemetry import trace
        except ImportError:
            raise IotwasmError("--otel needs the OpenTelemetry packages: pip install 'iotwasm[otel]'") from None
        from ..api.tracing import console_provider, enable_tracing

        provider = trace.get_tracer_provider()
        if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            provider = console_provider()  # nothing configured: show the spans
        enable_tracing(node, provider)
    agent = invocations = None
    if fleet is not None:  # {url, labels, taints, memory, instances, trusted}: join the fleet next to the node
        from ..fleet import FleetAgent

        agent = FleetAgent(node, **fleet)   # before the API, which serves the fleet views through it
    server = None
    if api is not None:  # an ApiSettings: serve the management API in this loop
        from ..api import ApiServer

        server = ApiServer(node, api, fleet=agent)
        try:
            await server.start()
        except IotwasmError as e:
            # a node asked for an API does not run on without one: another node on this host
            # holds the port, and an operator would otherwise find out only when the API is needed
            await server.stop()
            raise IotwasmError(f"{e}; give this node another port with --api HOST:PORT "
                               f"(a second node on this host), or --no-api") from None
        else:
            console.print(f"API on {server.url}" + (f" · admin token written to {server.admin_token_file}"
                                                    if server.admin_token_file else ""),
                          highlight=False, soft_wrap=True)
            # the admin token goes into the link only on the operator's own terminal, never into
            # a log or a pipe (a service's journal is read by more people than the 0600 file)
            link = server.dashboard_url(with_token=console.is_terminal)
            console.print(f"dashboard: {link}", highlight=False, markup=False, soft_wrap=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, node.stop)
        except (NotImplementedError, RuntimeError):
            pass
    if own_process:
        log.info("%s objects built at start frozen out of the garbage collector's sight", f"{freeze_heap():,}")
    started = time.monotonic()
    final = None
    task = asyncio.create_task(node.run())
    candidate = None
    if agent is not None and fleet is not None:
        from ..fleet.invoke import serve_invocations

        agent.start()
        invocations = asyncio.create_task(serve_invocations(node, fleet["url"]), name="invocations")
        if controller:
            candidate = asyncio.create_task(_candidate(fleet["url"], agent.id), name="controller-candidate")
    # a worker (`up --workers`) shares its parent's terminal: lines, never a live table
    worker = (config.broker or "").startswith("ingress:")
    live = Live(console=console, refresh_per_second=4) if console.is_terminal and not worker else None
    if live:
        live.start()
    # the live table is redrawn four times a second; without it (a service, a log file) the
    # node is looked at only for its line every 5 s, or for the end of `--seconds`
    period = 0.25 if live else STATUS_LINE_S
    try:
        last_line = 0.0
        while not task.done():
            wait = period
            if seconds:
                wait = min(wait, max(0.01, seconds - (time.monotonic() - started)))
            await asyncio.wait({task}, timeout=wait)
            if task.done() or not node.ready:
                continue
            if seconds and time.monotonic() - started >= seconds and not node._stop.is_set():
                final = render(node, started)  # before shutdown empties the tables
                node.stop()
            if live and not node._stop.is_set():
                final = render(node, started)
                live.update(final)
            elif time.monotonic() - last_line >= 0.9 * STATUS_LINE_S:   # timers come a hair early
                last_line = time.monotonic()
                snap = node.snapshot()
                # a worker of `up --workers` shares its parent's terminal: say whose line it is
                who = f"{node.config.name}: " if worker else ""
                console.print(who + "routes: " + "; ".join(
                    f"{n} {r['delivered']:,}/{r['received']:,} (dead {r['dead_letters']})"
                    for n, r in snap["routes"].items()), highlight=False)
        await task
    finally:
        if candidate is not None:   # first: releasing the lease lets another candidate lead at once
            candidate.cancel()
            await asyncio.gather(candidate, return_exceptions=True)
        if invocations is not None:
            invocations.cancel()
            try:
                await invocations
            except (asyncio.CancelledError, Exception):
                pass
        if server is not None and server.anchors is not None:
            await server.anchors.stop()   # the audit log's last anchor, while the fleet link is up
        if agent is not None:
            await agent.stop()
        if live:
            live.stop()
        if server is not None:
            await server.stop()
    if telemetry is not None:   # the last spans and metrics, sent off the loop
        await asyncio.to_thread(telemetry.shutdown)
    if final is not None and not live:
        console.print(final)
    return node


async def _candidate(url: str, node_id: str) -> None:
    """A controller candidate inside the node; it keeps trying to reach the fleet, as the agent
    does, so a node started while the fleet is down becomes a candidate when it returns."""
    from ..fleet import Controller

    logging.getLogger("iotwasm.fleet.lease").setLevel(logging.INFO)   # show leader/standby changes
    ctl = Controller(url, id=node_id)
    while True:
        try:
            await ctl.start()
            break
        except IotwasmError as e:
            logging.getLogger("iotwasm.fleet.controller").warning("%s; controller candidate retrying", e)
            await asyncio.sleep(2)
    try:
        await asyncio.Event().wait()
    finally:
        await ctl.stop()


def default_manifests() -> Path | None:
    for c in (Path.cwd() / "examples" / "greenhouse", Path(__file__).resolve().parents[3] / "examples" / "greenhouse"):
        if c.is_dir():
            return c
    return None


def configure_logging(verbose: bool, console: Console) -> None:
    """Rich's columns on a terminal; elsewhere (systemd's journal, a pipe, a file) one plain
    line per record, never wrapped, so the file, topic or error a line names can be searched."""
    from rich.logging import RichHandler

    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[handler])
