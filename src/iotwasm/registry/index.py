"""The registry's SQLite index: its schema, and what one of its module rows becomes.

Split from `store` (the operations on the index and the blobs); the schema, the version that
guards it and the shape of a record are what another iotwasm reading the same directory must
agree on, so they stand together. `store` re-exports `ModuleRecord` and `SCHEMA_VERSION`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..engine.module import ExportInfo, ImportInfo, ModuleInfo
from ..errors import ConfigError

#: bumped when the index schema changes incompatibly
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS modules (
    digest    TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    abi       TEXT NOT NULL,
    name      TEXT NOT NULL,
    added_at  REAL NOT NULL,
    info_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    digest     TEXT NOT NULL REFERENCES modules(digest),
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS tags_by_digest ON tags(digest);
"""


def create_schema(db: sqlite3.Connection, root: Path) -> None:
    """Create the index's tables, inside the caller's write transaction; an index written by a
    newer iotwasm (a higher `user_version`) is refused rather than misread."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise ConfigError(f"index schema version {found} is newer than this iotwasm "
                          f"understands ({SCHEMA_VERSION})", module=str(root))
    for stmt in filter(str.strip, _SCHEMA.split(";")):
        db.execute(stmt)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@dataclass(frozen=True)
class ModuleRecord:
    """What the store knows about one module (one digest)."""

    digest: str
    size: int
    abi: str
    #: the name given when the module was first added (or the file's stem)
    name: str
    #: seconds since the epoch when the module was first added
    added_at: float
    #: every "name:version" that points at this digest, in version order
    tags: tuple[str, ...]
    #: the inspection result recorded at add time (ABI, imports, exports, memory, problems)
    info: ModuleInfo

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[1][:12]


def info_to_json(info: ModuleInfo) -> str:
    """A module's description as the index stores it, read back by `info_from_json`."""
    return json.dumps(dataclasses.asdict(info), sort_keys=True)


def info_from_json(text: str) -> ModuleInfo | None:
    """Rebuild ModuleInfo from the index; None when the stored shape no longer fits."""
    try:
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(ModuleInfo)}
        d = {k: v for k, v in d.items() if k in known}
        d["imports"] = tuple(ImportInfo(**i) for i in d.get("imports", ()))
        d["exports"] = tuple(ExportInfo(**e) for e in d.get("exports", ()))
        d["problems"] = tuple(d.get("problems", ()))
        return ModuleInfo(**d)
    except (ValueError, TypeError, AttributeError):
        return None
