"""The PLC demo in one command: simulated PLCs → Modbus source → plausibility module →
PostgreSQL and the bus, with an overheat rule (examples/plc/README.md).

    .venv/bin/python examples/plc/run.py                  # until Ctrl-C
    .venv/bin/python examples/plc/run.py --seconds 20     # then print the summary and exit

It starts the two simulated PLCs and, unless --dsn names a database, a throwaway PostgreSQL,
creates the table, and runs a node on plc.yaml; every few seconds it prints what reached the
database. --base-port moves the demo's three ports (PLCs at N and N+1, PostgreSQL at N+2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from localpg import LocalPostgres  # noqa: E402
from simulate import SimulatedPlc, run_line  # noqa: E402

from iotwasm.node import Node, NodeConfig  # noqa: E402

TABLE = """CREATE TABLE IF NOT EXISTS readings (
  id bigserial PRIMARY KEY, device text NOT NULL, seq int, at_ms bigint, temperature real,
  pressure int, level real, cycles int, running boolean);
CREATE TABLE IF NOT EXISTS overheat (id bigserial PRIMARY KEY, device text, max_t real, readings int,
  at timestamptz DEFAULT now())"""
PASSWORD_ENV = "PLC_DEMO_PGPASSWORD"


def manifests(base: int, dsn: str | None, into: Path) -> Path:
    """plc.yaml as is, or a copy with the ports (and database) moved."""
    if base == 15020 and dsn is None:
        return HERE
    text = (HERE / "plc.yaml").read_text()
    text = text.replace("port: 15020", f"port: {base}").replace("port: 15021", f"port: {base + 1}")
    text = text.replace("postgresql://plc@127.0.0.1:15022/plant", dsn or f"postgresql://plc@127.0.0.1:{base + 2}/plant")
    text = text.replace("../modules/range_filter.wasm", str(HERE.parent / "modules" / "range_filter.wasm"))
    into.mkdir(parents=True, exist_ok=True)
    (into / "plc.yaml").write_text(text)
    return into


def db_rows(dsn: str, password: str) -> tuple[int, int, list[tuple]]:
    import psycopg

    with psycopg.connect(dsn, password=password, autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        hot = conn.execute("SELECT count(*) FROM overheat").fetchone()[0]
        latest = conn.execute("SELECT DISTINCT ON (device) device, seq, temperature, pressure, level, cycles, "
                              "running FROM readings ORDER BY device, id DESC").fetchall()
    return n, hot, latest


async def main(args) -> int:
    base = args.base_port
    password = os.environ.get(PASSWORD_ENV) or "plc-demo"
    os.environ[PASSWORD_ENV] = password
    pg = None
    if args.dsn is None:
        pg = await asyncio.to_thread(LocalPostgres, base + 2, "plc", password, "plant")
        dsn = pg.dsn
    else:
        dsn = args.dsn
    work = Path(args.data or tempfile.mkdtemp(prefix="iotwasm-plc-"))
    plcs = [SimulatedPlc("press1", base, 55.0, seed=1), SimulatedPlc("press2", base + 1, 76.0, seed=2)]
    node = None
    line = None
    try:
        import psycopg

        with psycopg.connect(dsn, password=password, autocommit=True) as conn:
            for statement in TABLE.split(";"):
                conn.execute(statement)
        for p in plcs:
            await p.start()
        line = asyncio.get_running_loop().create_task(run_line(plcs))
        node = Node(NodeConfig(data_dir=work / "data", manifests=manifests(base, args.dsn, work / "manifests"),
                               broker=args.broker, name="plc-demo"))
        await node.start()
        if node.last_problems:
            print("problems:", *node.last_problems, sep="\n  ")
            return 1
        print(f"PLCs on 127.0.0.1:{base},{base + 1}; database {dsn}; node data in {work}")
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())) if deadline else 2.0)
            n, hot, latest = await asyncio.to_thread(db_rows, dsn, password)
            src = node.routes["plc"].connectors()["source"] if "plc" in node.routes else {}
            print(f"{n} rows in readings, {hot} in overheat; source {src.get('health')} "
                  f"{src.get('counters')}")
            for d, seq, t, pa, lvl, cyc, run in latest:
                print(f"  {d}: poll {seq}  {t:6.1f} °C  {pa} Pa  level {lvl:.1f} %  cycles {cyc}  running {run}")
        n, hot, _ = await asyncio.to_thread(db_rows, dsn, password)
        dep = node.deployments["plausible"].handle.current.stats().totals()
        print(f"summary: {n} rows in PostgreSQL, {hot} overheat window(s), "
              f"{dep.get('messages', 0)} readings checked by the plausibility module, "
              f"{dep.get('messages', 0) - dep.get('outputs', 0)} dropped as glitches")
        return 0 if n > 0 else 1
    finally:
        if node is not None:
            await node.shutdown()
        if line is not None:
            line.cancel()
        for p in plcs:
            try:
                await p.stop()
            except Exception:  # noqa: BLE001 - never started
                pass
        if pg is not None:
            await asyncio.to_thread(pg.close)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    ap.add_argument("--base-port", type=int, default=15020, help="PLCs at N and N+1, PostgreSQL at N+2")
    ap.add_argument("--dsn", help="use this database instead of a throwaway one (password in $%s)" % PASSWORD_ENV)
    ap.add_argument("--broker", help="the node's bus, e.g. mqtt://127.0.0.1:1883 (default: in-process)")
    ap.add_argument("--data", help="node data directory (default: a new one under /tmp)")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)   # the simulator's datastore is a deprecated one
    try:
        sys.exit(asyncio.run(main(ap.parse_args())))
    except KeyboardInterrupt:
        pass
