"""The one way the node opens its SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from iotwasm.sqlite import open_db


@pytest.mark.parametrize("level,code", [("NORMAL", 1), ("FULL", 2)])
def test_open_db_settings(tmp_path, level, code):
    db = open_db(tmp_path / "a" / "b" / "x.db", synchronous=level, timeout_s=7,
                 schema="CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY); CREATE INDEX IF NOT EXISTS i ON t(k);")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == code
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
    db.execute("INSERT INTO t VALUES ('a')")
    assert not db.in_transaction  # autocommit: another connection sees the row at once
    with sqlite3.connect(tmp_path / "a" / "b" / "x.db") as other:
        assert other.execute("SELECT k FROM t").fetchall() == [("a",)]
    db.close()
    # reopening runs the schema again without complaint
    open_db(tmp_path / "a" / "b" / "x.db", synchronous=level, schema="CREATE TABLE IF NOT EXISTS t (k TEXT)").close()


def test_open_db_refuses_an_unknown_sync_level(tmp_path):
    with pytest.raises(ValueError, match="synchronous must be NORMAL or FULL"):
        open_db(tmp_path / "x.db", synchronous="OFF")  # type: ignore[arg-type]
