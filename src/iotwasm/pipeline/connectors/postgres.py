"""PostgreSQL sink: batched inserts of JSON messages into a table (psycopg 3, imported when a
route uses the kind).

Each message's JSON object becomes one row: ``columns`` maps a column to a field of the
object (a dotted path such as ``values.temp``, or ``$topic`` / ``$timestamp_ms`` for the
message's own), a missing field is NULL and an object or list goes in as jsonb. The mapping is
done when the route hands the batch over, so a message that is not a JSON object is a dead
letter at once, with the reason, rather than a row that can never be written.

With store-and-forward (the default) the rows go through the node's outbox: they are on disk
before the route counts them delivered, and deleted only once the transaction that inserted
them committed. An unreachable database fills the outbox, never loses rows; when it is back the
rows go in, in the order they came. Delivery is at-least-once: a connection lost between the
COMMIT and its answer sends that window again. A row the table refuses for good (SQLSTATE
class 22, data, or 23, a constraint: a value out of range, a NOT NULL or CHECK it breaks, a
duplicate key) is found among its transaction's rows by trying them one by one, and becomes a
dead letter of the route with the database's reason; the rows around it go in. Any other error
(the database away, a table or column missing, permissions) holds the sink, retried with
backoff, and is the sink's problem (describe, metrics) until it is fixed.

The password never goes into the manifest: ``passwordEnv`` names an environment variable of
the node (libpq's PGPASSWORD and ~/.pgpass work as well).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any, Awaitable

from pydantic import Field, field_validator

from ...engine.limits import parse_duration_ms
from ...errors import IotwasmError, SinkRejected
from ...message import Message
from ...messaging.bus import settled
from ..outbox import Forwarder
from ..sinks import Failures, SinkError, UplinkSink
from .base import Connector, registry, require
from .config import Strict

log = logging.getLogger("iotwasm.connectors.postgres")

IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
SPECIAL = {"$topic", "$timestamp_ms"}


class PostgresSink(Strict):
    dsn: str = Field(description="libpq connection string or URI, without the password, "
                                 "e.g. postgresql://iot@db:5432/plant")
    password_env: str | None = Field(None, alias="passwordEnv",
                                     description="environment variable of the node holding the password")
    table: str = Field(description="table (or schema.table) the rows go into; it must exist")
    columns: dict[str, str] = Field(min_length=1, description="column → JSON field path "
                                    "(dotted, e.g. values.temp) or $topic / $timestamp_ms")
    batch: int = Field(500, ge=1, le=10_000, description="most rows per INSERT transaction")
    timeout: str = Field("5s", description="connect and statement timeout")

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, v: str) -> str:
        if re.search(r"password\s*=", v, re.I) or re.match(r"^\w+://[^/@]*:[^/@]*@", v):
            raise ValueError("must not hold a password (use passwordEnv)")
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not re.fullmatch(rf"{IDENT}(\.{IDENT})?", v):
            raise ValueError("must be a plain identifier or schema.identifier")
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        for col, path in v.items():
            if not re.fullmatch(IDENT, col):
                raise ValueError(f"column {col!r} must be a plain identifier")
            if not (path in SPECIAL or re.fullmatch(r"[^.\s]+(\.[^.\s]+)*", path)):
                raise ValueError(f"column {col}: {path!r} is not a field path")
        return v


def _field(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def row_of(cfg: PostgresSink, m: Message) -> list:
    """The row a message becomes; a `SinkError` when its payload is not a JSON object."""
    try:
        obj = json.loads(m.payload)
    except ValueError:
        raise SinkError(f"postgres sink: payload on {m.topic!r} is not JSON") from None
    if not isinstance(obj, dict):
        raise SinkError(f"postgres sink: payload on {m.topic!r} is not a JSON object")
    out: list[Any] = []
    for path in cfg.columns.values():
        if path == "$topic":
            out.append(m.topic)
        elif path == "$timestamp_ms":
            out.append(m.timestamp_ms)
        else:
            out.append(_field(obj, path))
    return out


class PostgresTableSink(UplinkSink):
    def __init__(self, name: str, cfg: PostgresSink, outbox=None):
        from psycopg import sql

        self.name = name
        self.cfg = cfg
        self.outbox = outbox
        self.timeout = parse_duration_ms(cfg.timeout) / 1000
        table = sql.Identifier(*cfg.table.split("."))
        cols = [sql.Identifier(c) for c in cfg.columns]
        self.insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table, sql.SQL(", ").join(cols), sql.SQL(", ").join(sql.Placeholder() * len(cols)))
        self._conn = None
        self.rows = 0
        self.transactions = 0
        self.problem: str | None = None

    async def start(self) -> None:
        if self.outbox is not None:
            self.forwarder = Forwarder(self.outbox, self.name, self._submit_window, batch=self.cfg.batch,
                                       windows=1, reject=self.reject)
            self.forwarder.start()

    async def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            kw = {"connect_timeout": max(1, round(self.timeout))}
            if self.cfg.password_env:
                kw["password"] = os.environ.get(self.cfg.password_env, "")
            self._conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(self.cfg.dsn, **kw), self.timeout)
        return self._conn

    async def _write(self, rows: list[list]) -> list[SinkRejected | None]:
        """Insert the rows in one transaction per `batch` rows; one result per row: None
        (committed) or the `SinkRejected` of a row the table refused for good. Raises a
        `SinkError` naming the sink and the database's reason when the rows could not be
        written for another reason (none of the failed transaction's rows committed)."""
        import psycopg
        from psycopg.types.json import Jsonb

        plain = rows
        rows = [[Jsonb(v) if isinstance(v, (dict, list)) else v for v in r] for r in rows]
        results: list[SinkRejected | None] = []
        try:
            conn = await self._connection()
            for i in range(0, len(rows), self.cfg.batch):
                chunk = rows[i:i + self.cfg.batch]
                try:
                    await self._insert(conn, chunk)
                    results += [None] * len(chunk)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
                    results += await self._one_by_one(conn, chunk, plain[i:i + self.cfg.batch])
        except (psycopg.Error, OSError, asyncio.TimeoutError) as e:
            if self._conn is not None and (isinstance(e, (psycopg.OperationalError, OSError, asyncio.TimeoutError))
                                           or self._conn.broken):
                await self._close()
            self.problem = f"postgres sink {self.name} ({self.cfg.table}): {_why(e)}"
            raise SinkError(self.problem) from None
        self.problem = None
        return results

    async def _insert(self, conn, rows: list[list]) -> None:
        async with conn.transaction():
            async with conn.cursor() as cur:
                await asyncio.wait_for(cur.executemany(self.insert, rows), self.timeout)
        self.rows += len(rows)
        self.transactions += 1

    async def _one_by_one(self, conn, rows: list[list], plain: list[list]) -> list[SinkRejected | None]:
        """A transaction the table refused: each row alone, to find the ones it refuses. A
        refused row's dead letter holds it column by column (`plain`: the values as mapped)."""
        import psycopg

        out: list[SinkRejected | None] = []
        for row, values in zip(rows, plain):
            try:
                await self._insert(conn, [row])
                out.append(None)
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
                shown = json.dumps(dict(zip(self.cfg.columns, values)), default=str).encode()
                out.append(SinkRejected(f"postgres sink {self.name} ({self.cfg.table}) refused "
                                        f"the row: {_why(e)}", payload=shown))
        return out

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    async def _submit_window(self, items: list[tuple[str, bytes]]) -> Awaitable[list[Exception | None]]:
        try:
            results: list[Exception | None] = list(await self._write([json.loads(p) for _, p in items]))
        except IotwasmError as e:
            return settled([e] * len(items))
        return settled(results)

    async def deliver(self, messages: list[Message], variables: list[dict]) -> Failures:
        failures: Failures = []
        kept: list[tuple[str, bytes]] = []
        rows: list[list] = []
        for i, m in enumerate(messages):
            try:
                row = row_of(self.cfg, m)
            except SinkError as e:
                failures.append((i, e))
                continue
            rows.append(row)
            kept.append((m.topic, json.dumps(row, separators=(",", ":")).encode()))
        if not rows:
            return failures
        if self.outbox is not None:
            await self._keep(kept)
            return failures
        ok = [i for i in range(len(messages)) if i not in {f[0] for f in failures}]
        try:
            written = await self._write(rows)
        except SinkError as e:
            failures += [(i, e) for i in ok]
        else:
            failures += [(i, r) for i, r in zip(ok, written) if r is not None]
        return failures

    def status(self) -> dict:
        fwd_err = self.forwarder.last_error if self.forwarder else None
        problem = self.problem or fwd_err
        return {"health": "degraded" if problem else "ok", "problem": problem,
                "counters": {"rows": self.rows, "transactions": self.transactions, "backlog": self.backlog()}}

    async def stop(self, drain_timeout: float = 2.0) -> None:
        await super().stop(drain_timeout)
        await self._close()


def _why(e: BaseException) -> str:
    """The database's reason in one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


async def _build(ctx, cfg: PostgresSink, name: str, outbox) -> PostgresTableSink:
    require(POSTGRES)
    return PostgresTableSink(name, cfg, outbox)


POSTGRES = registry.register(Connector(
    "postgres", "sink", PostgresSink, _build,
    "At-least-once through the outbox (default): rows are on disk before the batch counts as "
    "delivered and deleted once their INSERT transaction committed; an unreachable database "
    "fills the outbox (bounded by its limits), never the route. A message that is not a JSON "
    "object is a dead letter at once, and so is a row the table refuses for good (a constraint "
    "or value it breaks; the rows around it go in); other errors hold the sink (retried, "
    "reported). Without storeAndForward a failed transaction dead-letters its batch.",
    requires=(("psycopg", "psycopg"),), extra="postgres"))
