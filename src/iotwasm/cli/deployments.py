"""`iotwasm ps`, `logs`, `scale`, `suspend`, `resume`, `rollback` and `history`: the commands
that act on one deployment, and the table of deployments they print (`get deployments` too).

Split from `client` (the config file, the connection to a node and the output every command
shares): these verbs take a deployment's name alone, where those of `objects` take a kind and a
name.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich import markup
from rich.table import Table

from .client import CONTEXT, OUTPUT, Client, make_table, fmt_time, emit, fail, out


def deployments_table(items: list[dict]) -> Table:
    """Deployments as `iotwasm get deployments` and `iotwasm get all` list them."""
    return make_table(None, ["name", "namespace", "state", "rev", "replicas", "messages", "outputs", "errors",
                         "restarts", "module"],
                  [[d["name"], d["namespace"], d["state"], d.get("revision"), d.get("replicas"),
                    d.get("messages", 0), d.get("outputs", 0),
                    ", ".join(f"{k} {v}" for k, v in (d.get("errors") or {}).items()) or "-",
                    d.get("restarts", 0), d["module"]] for d in items])


def ps(context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Deployments (WASM containers) with their state and counters."""
    data = Client(context).call("GET", "/v1/deployments")
    emit(data, output, deployments_table(data))


def logs(name: str = typer.Argument(..., help="deployment"), follow: bool = typer.Option(False, "--follow", "-f"),
         since: int = typer.Option(0, help="only lines after this sequence number"),
         tail: int = typer.Option(200, help="at most this many earlier lines"),
         context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Guest log lines of a deployment (host log calls and WASI stderr); -f follows them."""
    # the node escapes them too: a guest's line never reaches the terminal raw
    from ..node.logs import printable

    c = Client(context)
    params = {"since": since, "limit": tail}

    def show(line: dict) -> None:
        if output == "json":
            print(json.dumps(line), flush=True)
        else:
            out.print(f"[dim]{fmt_time(line['ts'])}[/] {line['level']:<7} {markup.escape(printable(line['text']))}",
                      highlight=False)
            sys.stdout.flush()

    if not follow:
        for line in c.call("GET", f"/v1/deployments/{name}/logs", params=params):
            show(line)
        return
    try:
        for line in c.stream(f"/v1/deployments/{name}/logs", params={**params, "follow": "true"}):
            show(line)
    except KeyboardInterrupt:
        pass


def scale(name: str, replicas: str = typer.Argument(..., help="a number (fixed), or MIN..MAX (instances on demand)"),
          context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Set a deployment's number of replicas, or the range the node scales it within."""
    low, sep, high = replicas.partition("..")
    if not (low.isdigit() and (high.isdigit() if sep else True)):
        fail(f"replicas {replicas!r}: a number, or MIN..MAX such as 0..8")
    body = {"min": int(low), "max": int(high)} if sep else {"replicas": int(low)}
    data = Client(context).call("POST", f"/v1/deployments/{name}/scale", json=body)
    emit(data, output, deployments_table([data]))


def suspend(name: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Stop a deployment taking batches (messages wait in its routes)."""
    data = Client(context).call("POST", f"/v1/deployments/{name}/suspend")
    emit(data, output, deployments_table([data]))


def resume(name: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Resume a suspended deployment."""
    data = Client(context).call("POST", f"/v1/deployments/{name}/resume")
    emit(data, output, deployments_table([data]))


def rollback(name: str, to: Optional[int] = typer.Option(None, "--to", help="revision (default: the previous one)"),
             context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Roll a deployment back to an earlier revision (applied as a new revision)."""
    c = Client(context)
    data = c.call("POST", f"/v1/deployments/{name}/rollback", json={"revision": to})
    emit(data, output, deployments_table([data]))


def history(name: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """A deployment's revisions."""
    data = Client(context).call("GET", f"/v1/deployments/{name}/history")
    emit(data, output, make_table(None, ["revision", "status", "module", "created", "reason"],
                              [[h["revision"], h["status"], h["module_digest"][:19], fmt_time(h["created"]), h["reason"]]
                               for h in data]))
