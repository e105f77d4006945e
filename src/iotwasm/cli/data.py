"""`iotwasm data …`: read a node's local store without sqlite3 and without its API.

The node keeps what it produced in SQLite files under its data directory: results of store
sinks (``store.db``, one table per sink), dead letters and module key-value data
(``node.db``), and what waits for a broker (``outbox.db``). These commands open them read-only
(a running node keeps writing; SQLite's WAL lets a reader look at the same time) and print
tables, or JSON with ``-o json``. They work on a stopped node too, which is when an operator
most often needs them. Payloads are shown as JSON when they are, text when they are, base64
otherwise, with control characters escaped: device data never reaches a terminal raw.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

import typer

from .client import make_table, emit, fail

data_app = typer.Typer(no_args_is_help=True,
                       help="Read a node's local store (results, dead letters, kv, outbox) without sqlite3.")

DATA = typer.Option(Path(".iotwasm"), "--data", help="the node's data directory (iotwasm up --data)")
OUTPUT = typer.Option("table", "--output", "-o", help="table or json")
LIMIT = typer.Option(20, "--limit", "-n", min=1, max=10_000, help="at most this many rows, newest first")


def _open(data: Path, file: str) -> sqlite3.Connection:
    path = data / file
    if not path.is_file():
        fail(f"{path}: no such file (is {data} a node's data directory? iotwasm up --data DIR)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as e:
        fail(f"{path}: cannot read: {e}")
    return db


def _rows(db: sqlite3.Connection, path: str, sql: str, args: tuple | list = ()) -> list[tuple]:
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error as e:
        fail(f"{path}: {e}")
    return []


def _payload(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def _preview(value: Any, limit: int = 80) -> str:
    from ..node.logs import printable

    text = printable(value if isinstance(value, str) else json.dumps(value))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _result_tables(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in _rows(db, "store.db", "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                "AND name NOT LIKE 'sqlite_%' ORDER BY name")]


@data_app.command("summary")
def summary(data: Path = DATA, output: str = OUTPUT) -> None:
    """What the store holds: rows per results table, dead letters per route and step, kv
    entries per deployment, the outbox backlog per sink."""
    doc: dict[str, Any] = {"results": {}, "dead_letters": [], "kv": {}, "outbox": {}}
    if (data / "store.db").is_file():
        with closing(_open(data, "store.db")) as db:
            for t in _result_tables(db):
                doc["results"][t] = _rows(db, "store.db", f'SELECT count(*) FROM "{t}"')[0][0]
    with closing(_open(data, "node.db")) as db:
        doc["dead_letters"] = [{"route": r[0], "step": r[1], "count": r[2]} for r in _rows(
            db, "node.db", "SELECT route, step, count(*) FROM dead_letters GROUP BY route, step ORDER BY route, step")]
        doc["kv"] = {r[0]: r[1] for r in _rows(
            db, "node.db", "SELECT coalesce(o.name, kv.uid), count(*) FROM kv LEFT JOIN objects o "
                           "ON o.uid = kv.uid GROUP BY kv.uid ORDER BY 1")}
    if (data / "outbox.db").is_file():
        with closing(_open(data, "outbox.db")) as db:
            doc["outbox"] = {r[0]: r[1] for r in _rows(db, "outbox.db", "SELECT sink, count(*) FROM outbox "
                                                                        "GROUP BY sink ORDER BY sink")}
    rows = ([["results", t, n] for t, n in doc["results"].items()]
            + [["dead letters", f"{d['route']} / {d['step']}", d["count"]] for d in doc["dead_letters"]]
            + [["kv", n, c] for n, c in doc["kv"].items()]
            + [["outbox backlog", s, n] for s, n in doc["outbox"].items()])
    emit(doc, output, make_table(f"store of {data}", ["what", "where", "rows"], rows or [["(empty)", "-", 0]]))


@data_app.command("results")
def results(table: Optional[str] = typer.Argument(None, help="a store sink's table (default: list them)"),
            data: Path = DATA, limit: int = LIMIT, output: str = OUTPUT) -> None:
    """Rows a route's store sink wrote (`store: {table: …}`), newest first."""
    with closing(_open(data, "store.db")) as db:
        tables = _result_tables(db)
        if table is None:
            counts = {t: _rows(db, "store.db", f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}
            emit(counts, output, make_table(None, ["table", "rows"], [[t, n] for t, n in counts.items()]))
            return
        if table not in tables:
            fail(f"no results table {table!r} in {data / 'store.db'}; there are: {', '.join(tables) or 'none'}")
        got = _rows(db, "store.db", f'SELECT id, route, topic, payload, stored FROM "{table}" '
                                    "ORDER BY id DESC LIMIT ?", (limit,))
    items = [{"id": r[0], "route": r[1], "topic": r[2], "payload": _payload(r[3]), "stored": r[4]} for r in got]
    emit(items, output, make_table(None, ["id", "stored", "route", "topic", "payload"],
                               [[i["id"], _ts(i["stored"]), i["route"], i["topic"], _preview(i["payload"])]
                                for i in items]))


@data_app.command("dead-letters")
def dead_letters(route: Optional[str] = typer.Option(None, "--route", help="only this route's"),
                 data: Path = DATA, limit: int = LIMIT, output: str = OUTPUT) -> None:
    """Messages a route could not deliver, newest first: where (route, step), why (kind and
    error) and the message itself."""
    sql = "SELECT id, ts, route, step, kind, error, topic, payload FROM dead_letters"
    args: list = []
    if route:
        sql += " WHERE route = ?"
        args.append(route)
    with closing(_open(data, "node.db")) as db:
        got = _rows(db, "node.db", sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
    items = [{"id": r[0], "ts": r[1], "route": r[2], "step": r[3], "kind": r[4], "error": r[5], "topic": r[6],
              "payload": _payload(r[7])} for r in got]
    emit(items, output, make_table(None, ["id", "time", "route", "step", "kind", "error", "topic", "payload"],
                               [[i["id"], _ts(i["ts"]), i["route"], i["step"], i["kind"], i["error"], i["topic"],
                                 _preview(i["payload"], 40)] for i in items]))


@data_app.command("kv")
def kv(deployment: Optional[str] = typer.Argument(None, help="only this deployment's entries"),
       data: Path = DATA, limit: int = typer.Option(100, "--limit", "-n", min=1, max=100_000),
       output: str = OUTPUT) -> None:
    """Key-value entries modules keep (`kv` capability), by deployment."""
    sql = ("SELECT coalesce(o.name, kv.uid), kv.key, kv.value FROM kv LEFT JOIN objects o ON o.uid = kv.uid "
           "AND o.retired IS NULL")
    args: list = []
    if deployment:
        sql += " WHERE o.name = ?"
        args.append(deployment)
    with closing(_open(data, "node.db")) as db:
        got = _rows(db, "node.db", sql + " ORDER BY 1, kv.key LIMIT ?", [*args, limit])
    items = [{"deployment": r[0], "key": _payload(r[1]), "value": _payload(r[2])} for r in got]
    emit(items, output, make_table(None, ["deployment", "key", "value"],
                               [[i["deployment"], _preview(i["key"], 40), _preview(i["value"])] for i in items]))


@data_app.command("outbox")
def outbox(data: Path = DATA, output: str = OUTPUT) -> None:
    """What waits to be sent per sink (store-and-forward while a broker is away)."""
    with closing(_open(data, "outbox.db")) as db:
        got = _rows(db, "outbox.db", "SELECT sink, count(*), coalesce(sum(length(payload)), 0), min(created) "
                                     "FROM outbox GROUP BY sink ORDER BY sink")
    items = [{"sink": r[0], "messages": r[1], "bytes": r[2], "oldest": r[3]} for r in got]
    emit(items, output, make_table(None, ["sink", "messages", "bytes", "oldest"],
                               [[i["sink"], i["messages"], i["bytes"], _ts(i["oldest"])] for i in items]
                               or [["(empty)", 0, 0, "-"]]))
