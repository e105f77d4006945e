"""`iotwasm apply`, `get`, `describe` and `rm`: the verbs that take any kind of object on a
node (deployments, routes, rules, modules, tenants, tokens, events) by kind and name, as
kubectl's do, and the kinds they know.

Split from `client` (the config file, the connection to a node and the output every command
shares); the tables of deployments and of rules come from the modules of their own commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich import markup
from rich.progress import BarColumn, Progress
from rich.table import Table

from .client import CONTEXT, OUTPUT, Client, fmt_mib, make_table, fmt_time, without_nulls, emit, err, fail, out, show
from .deployments import deployments_table
from .rules import rules_table


def apply(files: List[Path] = typer.Option(..., "--filename", "-f", help="manifest file or directory (repeatable)"),
          wait: float = typer.Option(0.0, "--wait", help="seconds to follow the rollout of changed deployments "
                                                          "until their health gate decides (0: do not wait)"),
          context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Apply manifests to the node (created / configured / unchanged)."""
    texts = []
    for f in files:
        paths = sorted([*f.glob("*.yaml"), *f.glob("*.yml")]) if f.is_dir() else [f]
        for p in paths:
            try:
                texts.append(p.read_text())
            except OSError as e:
                fail(f"{p}: cannot read: {e.strerror}")
    body = "\n---\n".join(texts)
    res = Client(context).call("POST", "/v1/apply", content=body.encode(),
                               headers={"Content-Type": "application/yaml"})
    emit(res, output, make_table(None, ["kind", "name", "namespace", "action"],
                             [[a["kind"], a["name"], a["namespace"], a["action"]] for a in res["applied"]]))
    for p in res["problems"]:
        err.print(f"[red]problem:[/] {p}", highlight=False, soft_wrap=True)
    if res["problems"]:
        raise typer.Exit(1)
    changed = [a["name"] for a in res["applied"] if a["kind"] == "Deployment" and a["action"] != "unchanged"]
    if wait > 0 and changed:
        outcome = follow_rollout(Client(context), changed, wait, show=output != "json")
        if output == "json":
            print(json.dumps(outcome, indent=2))
        if any(v != "serving" for v in outcome.values()):
            raise typer.Exit(1)


def follow_rollout(c: "Client", names: list[str], timeout: float, show: bool = True) -> dict[str, str]:
    """Poll each deployment's newest revision until it is no longer gating; a progress line
    per deployment. Returns name → final status (serving, rolled-back, refused or gating)."""
    status: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    progress = Progress("[progress.description]{task.description}", BarColumn(), "{task.fields[status]}",
                        console=err, disable=not show)
    with progress:
        tasks = {n: progress.add_task(f"rollout {n}", total=1, status="gating") for n in names}
        while True:
            for n in names:
                hist = c.call("GET", f"/v1/deployments/{n}/history")
                status[n] = hist[-1]["status"] if hist else "pending"
                done = status[n] not in ("gating", "pending")
                progress.update(tasks[n], completed=1 if done else 0, status=status[n])
            if all(v not in ("gating", "pending") for v in status.values()) or time.monotonic() > deadline:
                return status
            time.sleep(0.2)


KINDS = {"deployments": "deployments", "deployment": "deployments", "deploy": "deployments",
         "routes": "routes", "route": "routes", "modules": "modules", "module": "modules",
         "tenants": "tenants", "tenant": "tenants", "tokens": "tokens", "events": "events",
         "rules": "rules", "rule": "rules"}


def _kind(kind: str) -> str:
    if kind.lower() not in KINDS:
        fail(f"unknown kind {kind!r}: one of deployments, routes, rules, modules, tenants, tokens, events")
    return KINDS[kind.lower()]


def get(kind: str = typer.Argument(..., help="deployments, routes, rules, modules, tenants, tokens, events"),
        name: Optional[str] = typer.Argument(None), context: Optional[str] = CONTEXT,
        output: str = OUTPUT) -> None:
    """List objects of a kind, or show one."""
    k = _kind(kind)
    c = Client(context)
    if name:
        if k == "events":
            data = c.call("GET", "/v1/events", params={"object": name})
        else:
            data = c.call("GET", f"/v1/{k}/{name}")
        emit(data, "json" if output == "json" else "yaml-ish", None)
        return
    data = c.call("GET", f"/v1/{k}")
    if k == "deployments":
        t = deployments_table(data)
    elif k == "routes":
        t = make_table(None, ["name", "namespace", "state", "source", "steps", "sinks", "received", "delivered",
                          "dead letters", "queued"],
                   [[r["name"], r["namespace"], r["state"], r["source"], " → ".join(r["steps"]) or "-",
                     ", ".join(r["sinks"]), r.get("received"), r.get("delivered"), r.get("dead_letters"),
                     r.get("queued")] for r in data])
    elif k == "rules":
        t = rules_table(data)
    elif k == "modules":
        t = make_table(None, ["digest", "name", "tags", "abi", "size", "signed by", "used by"],
                   [[m["digest"][:19], m["name"], ", ".join(m["tags"]) or "-", m["abi"], f"{m['size']:,}",
                     ", ".join(m["signed_by"]) or "-", ", ".join(m["used_by"]) or "-"] for m in data])
    elif k == "tenants":
        t = make_table(None, ["name", "topic prefix", "memory", "instances", "deployments", "signatures", "keys"],
                   [[x["name"], x["topic_prefix"] or "-", x["max_memory"], x["max_instances"],
                     x["max_deployments"], "required" if x["require_signatures"] else "-",
                     ", ".join(x["trusted_keys"]) or "-"] for x in data])
    elif k == "tokens":
        t = make_table(None, ["id", "name", "role", "tenant", "created", "expires", "revoked"],
                   [[x["id"], x["name"], x["role"], x["tenant"], fmt_time(x["created"]),
                     fmt_time(x.get("expires")) + (" (expired)" if x.get("expired") else ""), x["revoked"]]
                    for x in data])
    else:
        t = make_table(None, ["time", "kind", "object", "message"],
                   [[fmt_time(e["ts"]), e["kind"], e["object"], e["message"]] for e in data])
    emit(data, output, t)


def describe(kind: str = typer.Argument(..., help="deployment, route, rule, module or tenant"),
             name: Optional[str] = typer.Argument(None), context: Optional[str] = CONTEXT,
             output: str = OUTPUT) -> None:
    """Everything about one object: state, manifest, instances, recent events (and a route's
    recent dead letters)."""
    if name is None:
        _which_kind(kind, context)
    k = _kind(kind)
    data = Client(context).call("GET", f"/v1/{k}/{name}")
    if output == "json":
        emit(data, "json")
        return
    t = Table(show_header=False, box=None)
    t.add_column(style="bold cyan")
    t.add_column()
    for key, v in data.items():
        if key in ("manifest", "events", "instances", "dead_letters_recent", "info") or v is None:
            continue
        v = without_nulls(v)
        t.add_row(key, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    show(t)
    if data.get("instances"):
        show(make_table("instances", ["#", "calls", "messages", "outputs", "dead letters", "memory",
                                       "peak", "fuel", "avg ms", "exec ms", "last used"],
                         [[i["index"], i["calls"], i["messages"], i["outputs"], i["dead_letters"],
                           fmt_mib(i.get("memory_bytes")), fmt_mib(i.get("peak_memory_bytes")), i["fuel_used"],
                           i["avg_latency_ms"], i.get("execution_ms"), fmt_time(i.get("last_used"))]
                          for i in data["instances"]]))
    if data.get("dead_letters_recent"):
        show(make_table("recent dead letters", ["id", "time", "step", "kind", "error", "topic", "payload"],
                    [[d.get("id"), fmt_time(d["ts"]), d.get("step") or "-", d["kind"], d["error"], d["topic"],
                      _preview(d.get("payload", ""))] for d in data["dead_letters_recent"]]))
    if data.get("events"):
        show(make_table("events", ["time", "kind", "message"],
                    [[fmt_time(e["ts"]), e["kind"], e["message"]] for e in data["events"]]))
    if data.get("manifest"):
        out.print("[bold]manifest[/]")
        out.print(markup.escape(yaml.safe_dump(without_nulls(data["manifest"]), sort_keys=False)),
                  highlight=False, soft_wrap=True)


def _preview(payload: str, limit: int = 60) -> str:
    from ..node.logs import printable   # a payload is device data: never raw on a terminal

    text = printable(payload)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _which_kind(name: str, context: str | None) -> None:
    """`describe NAME` without a kind: say which kinds have an object of that name and how to
    ask for it, instead of typer's bare "missing argument"."""
    if name.lower() in KINDS:
        fail(f"which {KINDS[name.lower()][:-1]}? iotwasm describe {name} NAME "
             f"(list them: iotwasm get {KINDS[name.lower()]})")
    c = Client(context)
    found = []
    for kind in ("deployments", "routes", "rules", "modules", "tenants"):
        r = c.http.get(f"/v1/{kind}/{name}")
        if r.status_code == 200:
            found.append(kind[:-1])
    if found:
        fail("describe needs a kind first: " + " or ".join(f"iotwasm describe {k} {name}" for k in found))
    fail(f"describe needs a kind and a name (iotwasm describe deployment|route|rule|module|tenant NAME); "
         f"no object is named {name!r}")


def rm(kind: str = typer.Argument(..., help="deployment, route, rule or module"), name: str = typer.Argument(...),
       context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Delete a deployment, route, rule or (unused) module."""
    k = _kind(kind)
    if k not in ("deployments", "routes", "rules", "modules"):
        fail(f"cannot delete {kind}")
    data = Client(context).call("DELETE", f"/v1/{k}/{name}")
    emit(data, output, make_table(None, ["deleted"], [[name]]))
