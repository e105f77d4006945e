"""The schema of the node database (``node.db``) and its migrations.

Version 2 adds the device registry (``devices``: each device's reported and desired state with
their versions; ``device_commands``: the commands sent to devices and their outcomes, see
node/devices.py); going from 1 to 2 only creates those tables.

Version 1 keys every piece of state by the identity of the object it belongs to (``uid``),
where version 0 keyed it by name, so whoever created a name again inherited what the previous
object of that name left (its kv data, dead letters with their payloads, revision history and
events). Migrating from version 0 keeps every row: each is put under a provisional identity,
``legacy:<kind>:<name>``, which the first object of that kind and name the node reconciles after
the upgrade adopts (`NodeState.identify`); the node then archives what no object adopted
(`NodeState.finish_adoption`), so it is never handed to a later object of that name.
"""

from __future__ import annotations

import sqlite3

from ..errors import ConfigError
from ..sqlite import write_transaction

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    uid TEXT PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    created REAL NOT NULL, retired REAL, spec_digest TEXT, module_digest TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS objects_live ON objects(kind, name) WHERE retired IS NULL;
CREATE TABLE IF NOT EXISTS revisions (
    uid TEXT NOT NULL, revision INTEGER NOT NULL, name TEXT NOT NULL, module_digest TEXT NOT NULL,
    manifest TEXT NOT NULL, created REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (uid, revision));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    object TEXT NOT NULL, message TEXT NOT NULL, uid TEXT, namespace TEXT);
CREATE INDEX IF NOT EXISTS events_by_uid ON events(uid, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, route TEXT NOT NULL, step TEXT NOT NULL,
    kind TEXT NOT NULL, error TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    uid TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS dead_letters_by_uid ON dead_letters(uid, id);
CREATE TABLE IF NOT EXISTS kv (
    uid TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (uid, key));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, device TEXT NOT NULL,
    reported TEXT NOT NULL DEFAULT '{}', reported_version INTEGER NOT NULL DEFAULT 0,
    desired TEXT NOT NULL DEFAULT '{}', desired_version INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, last_seen REAL, silent INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS devices_by_name ON devices(namespace, device);
CREATE TABLE IF NOT EXISTS device_commands (
    id TEXT PRIMARY KEY, uid TEXT NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    updated REAL NOT NULL, result TEXT, error TEXT NOT NULL DEFAULT '', by TEXT NOT NULL DEFAULT '',
    log TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS device_commands_by_uid ON device_commands(uid, created);
"""

#: tables whose rows belong to one object (column `uid`); events also have node-wide rows
OWNED_TABLES = ("kv", "revisions", "dead_letters", "events")

# version 0 → 1: the by-name tables become by-identity tables, every row kept
_FROM_NAMES = """
ALTER TABLE revisions RENAME TO revisions_v0;
CREATE TABLE revisions (
    uid TEXT NOT NULL, revision INTEGER NOT NULL, name TEXT NOT NULL, module_digest TEXT NOT NULL,
    manifest TEXT NOT NULL, created REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (uid, revision));
INSERT INTO revisions SELECT 'legacy:Deployment:' || name, revision, name, module_digest, manifest, created,
    status, reason FROM revisions_v0;
DROP TABLE revisions_v0;
ALTER TABLE kv RENAME TO kv_v0;
CREATE TABLE kv (uid TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (uid, key));
INSERT INTO kv SELECT 'legacy:Deployment:' || container, key, value FROM kv_v0;
DROP TABLE kv_v0;
ALTER TABLE events ADD COLUMN uid TEXT;
ALTER TABLE events ADD COLUMN namespace TEXT;
ALTER TABLE dead_letters ADD COLUMN uid TEXT NOT NULL DEFAULT '';
UPDATE dead_letters SET uid = 'legacy:Route:' || route;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta SELECT 'legacy_events_until', coalesce(max(id), 0) FROM events;
INSERT INTO meta VALUES ('legacy_adoption', 'pending');
"""


def legacy_uid(kind: str, name: str) -> str:
    return f"legacy:{kind}:{name}"


def migrate(db: sqlite3.Connection, where: str) -> None:
    """Bring the database at `db` to `SCHEMA_VERSION` in one transaction (a crash halfway
    leaves it as it was)."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise ConfigError(f"node database schema version {found} is newer than this iotwasm understands "
                          f"({SCHEMA_VERSION})", module=where)
    if found == SCHEMA_VERSION:
        return
    with write_transaction(db):
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if found == 0 and "kv" in tables:  # version 0: state keyed by name
            _script(db, _FROM_NAMES)
        _script(db, SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _script(db: sqlite3.Connection, script: str) -> None:
    # statement by statement: executescript() would commit the surrounding transaction
    for stmt in filter(str.strip, script.split(";")):
        db.execute(stmt)
