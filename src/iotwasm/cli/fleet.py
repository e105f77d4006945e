"""Fleet commands: `iotwasm controller`, `iotwasm nodes`, `iotwasm fleet apply|delete|list|invoke|leader`
and `iotwasm rollout status|pause|resume|abort` (straight to the fleet's NATS with --fleet), and
`iotwasm fleet status` (through a node's API)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Optional, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from ..errors import IotwasmError

out = Console()
err = Console(stderr=True)

EXIT_NO_LEADER = 4
#: a request is one NATS message, which a default server caps at 1 MiB
MAX_INVOKE_PAYLOAD = 1024 * 1024
FLEET = typer.Option(..., "--fleet", help="the fleet's NATS server: nats://host:port (JetStream on)")


def _fail(e: Exception) -> NoReturn:
    err.print(f"[bold red]error:[/] {e}", highlight=False)
    raise typer.Exit(1)


async def with_store(url: str, fn):
    """`fn(store)` on a fleet store connected for it and closed after, whatever happens."""
    from ..fleet import FleetStore

    store = await FleetStore.connect(url)
    try:
        return await fn(store)
    finally:
        await store.close()


def controller(fleet: str = FLEET,
               dead_after: float = typer.Option(3.0, help="seconds without a heartbeat before a node "
                                                          "counts as dead and its work is rebound"),
               interval: float = typer.Option(0.5, help="longest gap between liveness checks (0.25 s at most is used)"),
               id: Optional[str] = typer.Option(None, "--id", help="this controller's name in the leader "
                                                                   "lease (default: HOST-PID)"),
               lease_ttl: float = typer.Option(3.0, "--lease-ttl", help="seconds a leader's lease lasts "
                                                                        "unrenewed (the bucket's max age, "
                                                                        "set by its first creator)"),
               verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run a fleet controller until Ctrl-C: a candidate in the leader election; while it holds
    the lease it binds fleet deployments to live nodes, otherwise it stands by."""
    import logging

    from ..fleet import Controller
    from .up import configure_logging

    configure_logging(verbose, err)
    logging.getLogger("iotwasm.fleet.lease").setLevel(logging.INFO)   # leader/standby changes
    if lease_ttl <= 0:
        _fail(IotwasmError(f"--lease-ttl {lease_ttl}: must be more than 0 seconds"))

    async def main():
        ctl = Controller(fleet, dead_after_s=dead_after, interval_s=interval, id=id, lease_ttl_s=lease_ttl)
        await ctl.start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        err.print(f"controller {ctl.id} on {fleet}", highlight=False)
        await stop.wait()
        await ctl.stop()

    try:
        asyncio.run(main())
    except IotwasmError as e:
        _fail(e)


def _read_view(url: str):
    from ..fleet import FleetView

    return asyncio.run(with_store(url, lambda store: FleetView.read(store, url, timeout=10)))


def nodes(fleet: Optional[str] = typer.Option(None, "--fleet", help="the fleet's NATS server (default: ask "
                                              "the node of the current API context, see `iotwasm context`)"),
          context: Optional[str] = typer.Option(None, "--context", help="API context (without --fleet)"),
          output: str = typer.Option("table", "--output", "-o", help="table or json")) -> None:
    """List the fleet's nodes: labels, capacity, heartbeat age, assignments, problems."""
    if fleet:
        try:
            rows = _read_view(fleet).node_rows()
        except IotwasmError as e:
            _fail(e)
    else:
        from .client import Client

        rows = Client(context).call("GET", "/v1/fleet/nodes")
    if output == "json":
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"nodes of {fleet or 'the fleet'}")
    for col in ("node", "labels", "taints", "memory", "instances", "heartbeat", "health", "assigned", "running",
                "problems"):
        t.add_column(col)
    for r in rows:
        health = r.get("health", "ok")
        t.add_row(r["id"], ", ".join(f"{k}={v}" for k, v in sorted(r["labels"].items())),
                  ", ".join(r.get("taints", [])) or "-",
                  f"{r['memory'] >> 20} MiB", str(r["instances"]), f"{r['heartbeat_age_s']:.1f}s ago",
                  f"[green]{health}[/]" if health == "ok" else f"[red]{health}[/]",
                  ", ".join(r["assigned"]) or "-", ", ".join(r["running"]) or "-", "\n".join(r["problems"]) or "-")
    out.print(t)


fleet_app = typer.Typer(no_args_is_help=True, help="Fleet desired state: deployments with placement.")


@fleet_app.command("apply")
def apply(file: Path = typer.Argument(..., help="YAML: {deployment: <Deployment>, placement: {...}}"),
          fleet: str = FLEET) -> None:
    """Create or update a fleet deployment (compare-and-set); a module given as a local path is
    uploaded to the fleet object store and replaced by its digest, with its signature when
    MODULE.sig (from `iotwasm sign`) lies next to it."""
    from ..engine.module import read_source
    from ..fleet import FleetDeployment
    from ..registry.signing import Signature

    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        _fail(IotwasmError(f"{file}: {e}"))
    if not isinstance(doc, dict) or "deployment" not in doc:
        _fail(IotwasmError(f"{file}: expected a mapping with 'deployment' and 'placement'"))

    async def put(store):
        module = str(doc["deployment"].get("spec", {}).get("module", ""))
        if not module.startswith("sha256:"):
            path = (file.parent / module) if not Path(module).is_absolute() else Path(module)
            _, wasm = read_source(path)
            digest = doc["deployment"]["spec"]["module"] = await store.put_module(wasm)
            sig_file = path.with_name(path.name + ".sig")
            if sig_file.exists():
                sig = Signature.from_json(sig_file.read_text(), str(sig_file))
                if sig.digest != digest:
                    raise IotwasmError(f"{sig_file}: signs {sig.digest}, but {path} is {digest} "
                                       "(sign the module again)")
                await store.put_signature(sig)
        fd = FleetDeployment.parse(doc, str(file))
        current = await store.deployment(fd.name)
        rev = await store.put_deployment(fd, current[1] if current else None)
        return fd, rev

    try:
        fd, rev = asyncio.run(with_store(fleet, put))
    except (IotwasmError, OSError) as e:
        _fail(e)
    out.print(f"fleet deployment {fd.name} at revision {rev} (module {fd.deployment.spec.module[:19]})",
              highlight=False)


@fleet_app.command("delete")
def delete(name: str, fleet: str = FLEET) -> None:
    """Remove a fleet deployment; the controller unbinds it from every node."""
    async def remove(store):
        got = await store.deployment(name)
        if got is None:
            raise IotwasmError(f"fleet deployment {name}: not found (iotwasm fleet list shows them)")
        await store.delete_deployment(name, got[1])   # compare-and-set: not a version changed meanwhile
        return got[1]

    try:
        rev = asyncio.run(with_store(fleet, remove))
    except IotwasmError as e:
        _fail(e)
    out.print(f"fleet deployment {name} (revision {rev}) deleted", highlight=False)


@fleet_app.command("list")
def list_(fleet: str = FLEET) -> None:
    """Fleet deployments with their revision and placement."""
    async def collect(store):
        return await store.deployments(), await store.rollouts()

    try:
        deps, rollouts = asyncio.run(with_store(fleet, collect))
    except IotwasmError as e:
        _fail(e)
    for name, (fd, rev) in sorted(deps.items()):
        r = rollouts.get(name, (None, 0))[0]
        state = f"  rollout {r.state}" if r is not None and r.revision == rev else ""
        out.print(f"{name}  rev {rev}  module {fd.deployment.spec.module[:19]}  placement "
                  f"{fd.placement.model_dump_json(by_alias=True, exclude_defaults=True)}{state}", highlight=False)


@fleet_app.command("status")
def status(context: Optional[str] = typer.Option(None, "--context", help="API context (default: current)"),
           output: str = typer.Option("table", "--output", "-o", help="table or json")) -> None:
    """The fleet as the node of an API context sees it: counts, problems and every fleet
    deployment with where it is assigned and runs (needs a viewer token without tenant)."""
    from .client import Client

    c = Client(context)
    summary = c.call("GET", "/v1/fleet")
    deployments = c.call("GET", "/v1/fleet/deployments")
    if output == "json":
        print(json.dumps({"summary": summary, "deployments": deployments}, indent=2))
        return
    copies = summary["copies"]
    out.print(f"fleet {summary['url']} · seen from node {summary['node']} · {summary['nodes']} live node(s) · "
              f"{summary['deployments']} deployment(s) · copies {copies['assigned']}/{copies['wanted']} "
              f"assigned, {copies['running']} running", highlight=False)
    t = Table()
    for col in ("deployment", "rev", "module", "placement", "copies", "assigned", "running", "problems"):
        t.add_column(col)
    for d in deployments:
        p = d["placement"]
        where = ("per node" if p["perNode"] else f"{p['replicas']} cop{'y' if p['replicas'] == 1 else 'ies'}") + \
            "".join(f", {k}={v}" for k, v in sorted(p["nodeSelector"].items())) + \
            (f", spread by {p['spreadBy']}" if p.get("spreadBy") else "")
        t.add_row(d["name"], str(d["revision"]), d["module"][:19], where, f"{len(d['assigned'])}/{d['wanted']}",
                  ", ".join(d["assigned"]) or "-", ", ".join(d["running"]) or "-", "\n".join(d["problems"]) or "-")
    out.print(t)
    for p in summary["problems"]:
        err.print(f"[red]problem:[/] {p}", highlight=False, soft_wrap=True)


@fleet_app.command("leader")
def leader(fleet: str = FLEET, output: str = typer.Option("text", "--output", "-o", help="text or json")) -> None:
    """Which controller leads (holds the lease) and since when; exit 4 when none does."""
    try:
        got = asyncio.run(with_store(fleet, lambda s: s.lease_holder()))
    except IotwasmError as e:
        _fail(e)
    holder = {"id": got[0].get("id"), "since": got[0].get("since"), "revision": got[1]} if got else None
    if output == "json":
        print(json.dumps(holder))
    elif holder is None:
        out.print("no controller leads (nobody holds the lease)", highlight=False)
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if holder["since"] else "?"
        out.print(f"{holder['id']} leads since {since} (lease revision {holder['revision']})", highlight=False)
    if holder is None:
        raise typer.Exit(EXIT_NO_LEADER)


@fleet_app.command("invoke")
def invoke_(deployment: str, data: str = typer.Option(None, "--data", "-d",
                                                      help="the message payload (default: stdin)"),
            topic: str = typer.Option(None, "--topic", help="the message's topic"),
            timeout: float = typer.Option(1.0, "--timeout", help="seconds per try"),
            otlp: Optional[str] = typer.Option(None, "--otlp", help="export this call's span over OTLP/HTTP "
                                               "(or set OTEL_EXPORTER_OTLP_*): the node's spans join its trace"),
            fleet: str = FLEET) -> None:
    """Call a deployment on one replica anywhere in the fleet; print its outputs, one per line
    (dead letters on stderr; exit 3 when there were any)."""
    import sys

    import nats

    from ..fleet.invoke import invoke

    # stdin is read as bytes: a device frame is binary, and must reach the module as it is
    payload = data.encode() if data is not None else sys.stdin.buffer.read(MAX_INVOKE_PAYLOAD + 1)
    if len(payload) > MAX_INVOKE_PAYLOAD:
        _fail(IotwasmError(f"payload on stdin is larger than {MAX_INVOKE_PAYLOAD:,} bytes"))

    async def call(headers: dict[str, str]):
        try:
            nc = await nats.connect(fleet, connect_timeout=3, max_reconnect_attempts=0)
        except Exception as e:
            raise IotwasmError(f"fleet {fleet} not reachable: {e}") from None
        try:
            return await invoke(nc, deployment, payload, topic=topic, timeout=timeout, headers=headers)
        finally:
            await nc.close()

    try:
        from ..api.otlp import client_tracer

        traced = client_tracer(otlp)
        if traced is None:
            result = asyncio.run(call({}))
        else:
            result = _traced_call(traced, deployment, call)
    except IotwasmError as e:
        _fail(e)
    # outputs as bytes too (TOPIC, a tab, the payload as the module wrote it): a binary output
    # is not mangled by a text encoding on its way to a pipe
    for t, p in result.outputs:
        sys.stdout.buffer.write((t or "").encode() + b"\t" + p + b"\n")
    sys.stdout.buffer.flush()
    for d in result.dead_letters:
        err.print(f"dead letter ({d['kind']}) on node {result.node}: {d['error']}", highlight=False,
                  markup=False)
    if result.dead_letters:
        raise typer.Exit(3)


def _traced_call(traced, deployment: str, call):
    """Run `call` inside a client span whose W3C trace context goes along with the request, so
    the answering node's span is its child; the span is sent before the command exits."""
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider, tracer = traced
    try:
        with tracer.start_as_current_span("iotwasm.fleet.invoke", kind=SpanKind.CLIENT,
                                          attributes={"iotwasm.deployment": deployment}) as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            try:
                result = asyncio.run(call(carrier))
            except IotwasmError as e:
                span.set_status(Status(StatusCode.ERROR, str(e)))
                raise
            span.set_attribute("iotwasm.node", result.node)
            span.set_attribute("iotwasm.outputs", len(result.outputs))
            span.set_attribute("iotwasm.dead_letters", len(result.dead_letters))
            return result
    finally:
        provider.shutdown()


rollout_app = typer.Typer(no_args_is_help=True, help="Staged rollouts of fleet deployments.")


@rollout_app.command("status")
def rollout_status(name: Optional[str] = typer.Argument(None, help="one deployment (default: all)"),
                   fleet: str = FLEET,
                   output: str = typer.Option("table", "--output", "-o", help="table or json")) -> None:
    """Where each rollout stands: state, stage, updated and failed nodes, reason; with a name,
    its history too."""
    async def collect(store):
        if name is None:
            return {k: r for k, (r, _) in (await store.rollouts()).items()}
        got = await store.rollout(name)
        if got is None:
            raise IotwasmError(f"fleet deployment {name}: no rollout recorded")
        return {name: got[0]}

    try:
        records = asyncio.run(with_store(fleet, collect))
    except IotwasmError as e:
        _fail(e)
    if output == "json":
        from dataclasses import asdict

        print(json.dumps({k: asdict(r) for k, r in sorted(records.items())}, indent=2))
        return
    t = Table(title=f"rollouts on {fleet}")
    for col in ("deployment", "revision", "state", "stage", "updated", "failed", "reason"):
        t.add_column(col)
    for k, r in sorted(records.items()):
        t.add_row(k, str(r.revision), r.state, f"{r.stage_name()} ({r.stage + 1}/{r.stages})" if r.active else "-",
                  ", ".join(r.updated) or "-", "\n".join(f"{n}: {w}" for n, w in r.failed.items()) or "-",
                  r.reason or "-")
    out.print(t)
    if name is not None:
        for ts, text in records[name].events:
            out.print(f"{time.strftime('%H:%M:%S', time.localtime(ts))}  {text}", highlight=False, markup=False)


def _control(action: str):
    def command(name: str = typer.Argument(..., help="the fleet deployment"), fleet: str = FLEET) -> None:
        try:
            r = asyncio.run(with_store(fleet, lambda s: s.control_rollout(name, action)))
        except IotwasmError as e:
            _fail(e)
        out.print(f"rollout of {name} (revision {r.revision}): {r.state}", highlight=False)
    command.__doc__ = {"pause": "Hold a rollout at its stage (a newer revision still supersedes it).",
                       "resume": "Continue a paused rollout; its stage timeout starts again.",
                       "abort": "Stop a rollout and put every updated node back on the previous version."}[action]
    return command


for _action in ("pause", "resume", "abort"):
    rollout_app.command(_action)(_control(_action))


def register(app: typer.Typer) -> None:
    app.command()(controller)
    app.command()(nodes)
    app.add_typer(fleet_app, name="fleet")
    app.add_typer(rollout_app, name="rollout")
