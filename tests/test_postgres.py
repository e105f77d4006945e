"""PostgreSQL sink against a PostgreSQL server the test starts (Debian's binaries, free port):
columns mapped from JSON fields, batched inserts, the outbox in front so a database stopped
mid-stream and started again loses nothing, a wrong password and a bad payload reported in one
line each."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from iotwasm.node.manifests import ManifestError, parse_documents

from brokers import free_port
from pg import PostgresServer
from nodesite import started, wait_for, write

TABLE = "CREATE TABLE readings (id bigserial PRIMARY KEY, device text, n int, temp double precision, " \
        "topic text, meta jsonb)"


@pytest.fixture(scope="module")
def pg():
    server = PostgresServer()
    server.start()
    server.sql(TABLE)
    os.environ["IOTWASM_TEST_PGPASSWORD"] = server.password
    yield server
    os.environ.pop("IOTWASM_TEST_PGPASSWORD", None)
    server.close()


@pytest.fixture()
def clean(pg):
    pg.sql("TRUNCATE readings")
    return pg


def manifest(dsn: str, password_env: str = "IOTWASM_TEST_PGPASSWORD", extra: str = "") -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: db}}
spec:
  source: {{bus: {{topic: "in/{{device}}"}}}}
  sinks:
    - postgres:
        dsn: "{dsn}"
        passwordEnv: {password_env}
        table: readings
        batch: 50
        timeout: 2s
        columns: {{device: device, n: n, temp: values.temp, topic: $topic, meta: meta}}{extra}
"""


async def publish(node, start: int, n: int, pause_every: int = 0) -> None:
    for i in range(start, start + n):
        body = b'{"device": "d%d", "n": %d, "values": {"temp": %d.5}, "meta": {"k": [%d]}}' % (i % 4, i, i, i)
        await node.bus.publish(f"in/d{i % 4}", body, qos=1)
        if pause_every and i % pause_every == 0:
            await asyncio.sleep(0)


def test_rows_are_mapped_from_json_fields(clean, tmp_path: Path):
    pg = clean
    mdir = tmp_path / "m"
    mdir.mkdir()

    async def main():
        write(mdir, "db.yaml", manifest(pg.dsn))
        node = await started(tmp_path, mdir)
        try:
            await publish(node, 0, 120)
            await node.bus.publish("in/d9", b"not json", qos=1)
            await wait_for(lambda: pg.sql("SELECT count(*) FROM readings")[0][0] == 120, what="120 rows")
            got = pg.sql("SELECT device, n, temp, topic, meta FROM readings WHERE n = 7")
            assert got == [("d3", 7, 7.5, "in/d3", {"k": [7]})]
            # the sink counts a transaction's rows once its commit has returned to it, which
            # can be a moment after another connection already sees them
            await wait_for(lambda: node.routes["db"].connectors()["sinks"][0]["counters"]["rows"] == 120,
                           what="the sink counting 120 rows")
            st = node.routes["db"].connectors()["sinks"][0]
            assert st["kind"] == "postgres" and st["health"] == "ok"
            assert st["counters"]["rows"] == 120 and st["counters"]["transactions"] < 120
            await wait_for(lambda: node.routes["db"].runner.stats.dead_letters == 1, what="the bad payload dead")
            (dead,) = node.state.dead_letters("db", limit=10)
            assert dead["error"] == "postgres sink: payload on 'in/d9' is not JSON"
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_database_stopped_mid_stream_and_restarted_loses_nothing(clean, tmp_path: Path):
    pg = clean
    mdir = tmp_path / "m"
    mdir.mkdir()
    total = 1500

    async def main():
        write(mdir, "db.yaml", manifest(pg.dsn))
        node = await started(tmp_path, mdir)
        try:
            await publish(node, 0, 500)
            await wait_for(lambda: pg.sql("SELECT count(*) FROM readings")[0][0] >= 100, what="rows arriving")
            await asyncio.to_thread(pg.stop)              # cut mid-stream: some of the 500 still on their way
            sink = node.routes["db"].sinks[0]
            await publish(node, 500, 500)                 # the database is away meanwhile
            await wait_for(lambda: sink.status()["health"] == "degraded", what="the sink reporting the outage")
            assert sink.status()["problem"].startswith("postgres sink db/0:postgres (readings): ")
            # kept in the outbox while the database is away
            await wait_for(lambda: sink.backlog() >= 500, what="the outage's messages in the outbox")
            await asyncio.to_thread(pg.start)
            await publish(node, 1000, 500)
            # the bus hands the last messages over on its own time: all taken, then none left
            await wait_for(lambda: node.routes["db"].runner.stats.delivered == total and sink.backlog() == 0,
                           timeout=60, what="every message taken and the outbox drained")
            ns = [r[0] for r in pg.sql("SELECT n FROM readings")]
            assert sorted(set(ns)) == list(range(total)), f"lost: {sorted(set(range(total)) - set(ns))[:10]}"
            assert node.routes["db"].runner.stats.dead_letters == 0
            assert sink.status()["health"] == "ok"
        finally:
            await node.shutdown()
            if pg.proc is None:
                pg.start()

    asyncio.run(main())


def test_wrong_password_and_unreachable_host_are_the_sinks_problem(pg, tmp_path: Path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    os.environ["IOTWASM_TEST_WRONG"] = "nope"
    dead_port = free_port()

    async def main():
        write(mdir, "db.yaml", manifest(pg.dsn, password_env="IOTWASM_TEST_WRONG"))
        node = await started(tmp_path, mdir)
        try:
            await publish(node, 0, 3)
            sink = node.routes["db"].sinks[0]
            await wait_for(lambda: sink.status()["problem"] is not None, what="the refused login reported")
            problem = sink.status()["problem"]
            assert "password authentication failed for user \"iot\"" in problem and "\n" not in problem
            assert sink.backlog() == 3
            write(mdir, "db.yaml", manifest(f"postgresql://iot@127.0.0.1:{dead_port}/plant"))
            await node.sync()
            sink = node.routes["db"].sinks[0]
            await wait_for(lambda: sink.status()["problem"] is not None, what="the unreachable host reported")
            assert f"port {dead_port} failed" in sink.status()["problem"]
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_bad_configuration_is_one_line_naming_the_field():
    with pytest.raises(ManifestError) as e:
        parse_documents(manifest("postgresql://iot:pw@db/plant"), "db.yaml")
    assert e.value.problems == ["db.yaml#1 (Route db) spec.sinks[0].postgres.dsn: must not hold a "
                                "password (use passwordEnv)"]
    with pytest.raises(ManifestError) as e:
        parse_documents(manifest("postgresql://iot@db/plant").replace("table: readings", "table: 'x; drop'"), "db.yaml")
    assert e.value.problems == ["db.yaml#1 (Route db) spec.sinks[0].postgres.table: must be a plain "
                                "identifier or schema.identifier"]


def test_a_rule_writes_its_rows_through_a_sink_action(clean, tmp_path: Path):
    """A rule's `sink` action is any route sink: here its output rows go to PostgreSQL."""
    pg = clean
    mdir = tmp_path / "m"
    mdir.mkdir()
    rule = f"""
apiVersion: iotwasm.io/v1
kind: Rule
metadata: {{name: hot}}
spec:
  sql: SELECT device, n, temp * 2 AS temp FROM "rin/{{device}}" WHERE temp > 10
  actions:
    - sink:
        postgres:
          dsn: "{pg.dsn}"
          passwordEnv: IOTWASM_TEST_PGPASSWORD
          table: readings
          columns: {{device: device, n: n, temp: temp, topic: $topic}}
"""

    async def main():
        write(mdir, "rule.yaml", rule)
        node = await started(tmp_path, mdir)
        try:
            assert node.last_problems == []
            for i in range(20):
                await node.bus.publish(f"rin/d{i % 2}", b'{"device": "d%d", "n": %d, "temp": %d}' % (i % 2, i, i),
                                       qos=1)
            await wait_for(lambda: pg.sql("SELECT count(*) FROM readings")[0][0] == 9, what="the rule's 9 rows")
            got = pg.sql("SELECT device, n, temp, topic FROM readings ORDER BY n")
            assert got == [(f"d{i % 2}", i, 2.0 * i, "rules/hot") for i in range(11, 20)]
        finally:
            await node.shutdown()

    asyncio.run(main())


CHECKED = "CREATE TABLE IF NOT EXISTS checked (n int NOT NULL CHECK (n >= 0), device text)"


@pytest.mark.parametrize("saf", [True, False])
def test_a_row_the_table_refuses_is_a_dead_letter_and_the_rest_go_in(pg, tmp_path: Path, saf):
    """A CHECK constraint refuses one row of a batch: that row becomes a dead letter of the
    route with the database's reason, every other row goes in, and the sink stays healthy —
    through the outbox (found among its window's rows one by one) and without it."""
    pg.sql(CHECKED)
    pg.sql("TRUNCATE checked")
    mdir = tmp_path / "m"
    mdir.mkdir()
    text = manifest(pg.dsn, extra="" if saf else "\n      storeAndForward: false").replace(
        "table: readings", "table: checked").replace(
        "columns: {device: device, n: n, temp: values.temp, topic: $topic, meta: meta}",
        "columns: {n: n, device: device}")
    write(mdir, "db.yaml", text)

    async def main():
        node = await started(tmp_path, mdir)
        try:
            for i in range(60):
                n = -5 if i == 17 else i
                await node.bus.publish(f"in/d{i % 3}", b'{"device": "d%d", "n": %d}' % (i % 3, n), qos=1)
            runner = node.routes["db"].runner
            await wait_for(lambda: pg.sql("SELECT count(*) FROM checked")[0][0] == 59, what="59 rows")
            await wait_for(lambda: runner.stats.dead_letters == 1, what="the refused row dead")
            (dead,) = node.state.dead_letters("db", limit=10)
            assert dead["step"] == "db/0:postgres" and dead["kind"] == "sink_rejected"
            assert "refused the row" in dead["error"] and "checked_n_check" in dead["error"]
            # without the outbox the message itself; through it the row, column by column
            assert json.loads(dead["payload"])["n"] == -5
            ns = sorted(r[0] for r in pg.sql("SELECT n FROM checked"))
            assert ns == [i for i in range(60) if i != 17]
            sink = node.routes["db"].sinks[0]
            assert sink.status()["health"] == "ok"
            await wait_for(lambda: sink.backlog() == 0, what="the outbox emptied (refused row included)")
            assert runner.stats.dead_by["db/0:postgres"] == 1
            # the sink is not held: what comes next goes in too
            await node.bus.publish("in/d1", b'{"device": "d1", "n": 1000}', qos=1)
            await wait_for(lambda: pg.sql("SELECT count(*) FROM checked WHERE n = 1000")[0][0] == 1,
                           what="a later row")
        finally:
            await node.shutdown()

    asyncio.run(main())
