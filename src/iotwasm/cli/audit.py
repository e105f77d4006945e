"""`iotwasm audit`: query the node's hash-chained audit log, verify the chain — against anchors
kept elsewhere, too — and take anchors (docs/security.md#audit-anchors). Through the node's API,
or with ``--data`` straight from a data directory's ``audit.db``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from .client import CONTEXT, OUTPUT, Client, make_table, fmt_time, emit, err, fail, out

audit_app = typer.Typer(help="The node's hash-chained audit log.")


@audit_app.callback(invoke_without_command=True)
def audit_ls(ctx: typer.Context, actor: Optional[str] = typer.Option(None), tenant: Optional[str] = typer.Option(None),
             action: Optional[str] = typer.Option(None),
             since: Optional[float] = typer.Option(None, help="seconds ago"),
             limit: int = typer.Option(50), context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Query the audit log (newest first)."""
    if ctx.invoked_subcommand:
        return
    params: dict[str, Any] = {"limit": limit}
    for k, v in (("actor", actor), ("tenant", tenant), ("action", action)):
        if v:
            params[k] = v
    if since:
        params["since"] = time.time() - since
    data = Client(context).call("GET", "/v1/audit", params=params)
    emit(data, output, make_table(None, ["#", "time", "actor", "tenant", "action", "target", "outcome", "detail"],
                              [[r["id"], fmt_time(r["ts"]), r["actor"], r["tenant"] or "-", r["action"], r["target"],
                                r["outcome"], r["detail"][:80]] for r in data]))


def _offline_log(data: Path):
    from ..api.audit import AuditLog

    if not (data / "audit.db").exists():
        fail(f"{data / 'audit.db'}: no audit log there")
    return AuditLog(data / "audit.db")


def _anchors(source: str, node: str | None, c: "Client | None") -> list[dict]:
    """The anchors to verify against: a file's, or every one a fleet's JetStream still holds
    for the node (its id from --node, or asked from the node)."""
    import asyncio

    from ..api.audit import check_anchor

    if source.startswith(("nats://", "tls://")):
        from .fleet import with_store

        if node is None:
            if c is None:
                fail("--anchor nats://… with --data needs --node ID (the node's id in the fleet)")
            node = c.call("GET", "/v1/node")["name"]
        records = asyncio.run(with_store(source, lambda store: store.audit_anchors(node)))
        if not records:
            fail(f"{source}: no audit anchor of node {node!r} in the fleet")
        where = [f"{source} anchor {i + 1} of node {node}" for i in range(len(records))]
    else:
        try:
            records, where = [json.loads(Path(source).read_text())], [source]
        except OSError as e:
            fail(f"{source}: {e.strerror}")
        except ValueError as e:
            fail(f"{source}: not JSON ({e})")
    try:
        return [check_anchor(r, w) for r, w in zip(records, where)]
    except ValueError as e:
        fail(str(e))
        raise


@audit_app.command("verify")
def audit_verify(data: Optional[Path] = typer.Option(None, help="verify this data directory's audit.db "
                                                                 "directly instead of asking the node"),
                 anchor: Optional[str] = typer.Option(None, help="also check the log still holds an anchored head: "
                                                                 "a file from `iotwasm audit anchor`, or "
                                                                 "nats://host:port for the anchors the node "
                                                                 "published to its fleet"),
                 node: Optional[str] = typer.Option(None, help="the node's id in the fleet (with --anchor nats://… "
                                                               "and --data)"),
                 context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Check the audit log's hash chain; exit 1 when a row was changed, removed or reordered,
    or (with --anchor) when rows were cut from its end."""
    c = None if data is not None else Client(context)
    anchors = _anchors(anchor, node, c) if anchor else []
    if data is not None:
        log = _offline_log(data)
        try:
            res = log.verify(anchors)
        finally:
            log.close()
    else:
        if c is None:
            fail("no node to ask: pass --data DIR or a context")
        res = {"ok": True, "anchors": 0}
        each: list[dict | None] = [*anchors] or [None]
        for a in each:   # the API takes one anchor per call
            params = {"seq": a["seq"], "head": a["head"]} if a else {}
            got = c.call("GET", "/v1/audit/verify", params=params)
            res = {**got, "anchors": len(anchors)}
            if not got["ok"]:
                break
    if output == "json":
        print(json.dumps(res, indent=2))
    elif res["ok"]:
        pinned = f", {res['anchors']} anchor(s) hold" if res.get("anchors") else ""
        out.print(f"[green]ok[/]: {res['rows']} rows, chain head {res['head'][:16]}{pinned}", highlight=False)
    if not res["ok"]:
        if output != "json":
            err.print(f"[bold red]audit log tampered:[/] {res['problem']} ({res['rows']} rows verified "
                      "before it)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@audit_app.command("anchor")
def audit_anchor(out_file: Optional[Path] = typer.Option(None, "--out", help="write the anchor to this file "
                                                                                   "(default: print it)"),
                 data: Optional[Path] = typer.Option(None, help="take it from this data directory's audit.db "
                                                                "instead of asking the node"),
                 context: Optional[str] = CONTEXT) -> None:
    """The audit log's head (row, hash, count), as a small hashed record to keep somewhere the
    node cannot write; `iotwasm audit verify --anchor FILE` later proves no row up to it was
    cut or rewritten."""
    if data is not None:
        log = _offline_log(data)
        try:
            record = log.anchor()
        finally:
            log.close()
    else:
        record = Client(context).call("GET", "/v1/audit/anchor")
    text = json.dumps(record, indent=2) + "\n"
    if out_file is None:
        print(text, end="")
        return
    try:
        out_file.write_text(text)
    except OSError as e:
        fail(f"{out_file}: {e.strerror}")
    err.print(f"anchor of row {record['seq']} ({record['rows']} rows) written to {out_file}", highlight=False)
