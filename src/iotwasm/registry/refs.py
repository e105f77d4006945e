"""Resolving a module reference to one full digest: `sha256:<hex>`, a bare hex prefix,
`name:version`, `name` and `name:latest`.

Split from `store` (which calls `resolve_ref` with its connection, holding its lock); the
forms a reference may take, and which of them are refused as too short or ambiguous, are one
set of rules read against the index, apart from how modules get into it. `store` re-exports
`MIN_PREFIX`.
"""

from __future__ import annotations

import sqlite3

from ..errors import ModuleNotFound
from .blobs import HEX
from .names import version_key

#: digest prefixes shorter than this are refused: with few hex characters a prefix that is
#: unique today can become ambiguous tomorrow, and a deployment would suddenly break
MIN_PREFIX = 12


def resolve_ref(db: sqlite3.Connection, ref: str) -> str:
    """The digest `ref` names in the index `db` (see `ModuleStore.resolve` for the forms)."""
    if not isinstance(ref, str) or not ref:
        raise ModuleNotFound(f"empty or invalid module reference {ref!r}")
    if ref.startswith("sha256:"):
        return _by_prefix(db, ref, ref[len("sha256:"):])
    if ":" in ref:
        name, version = ref.split(":", 1)
        if version == "latest":
            return _latest(db, ref, name)
        row = db.execute("SELECT digest FROM tags WHERE name=? AND version=?",
                         (name, version)).fetchone()
        if row is None:
            have = tag_versions(db, name)
            hint = f" ({name} has {', '.join(have)})" if have else ""
            raise ModuleNotFound(f"no module {ref!r} in the module store{hint}")
        return row[0]
    lowered = ref.lower()
    if len(ref) >= MIN_PREFIX and HEX.fullmatch(lowered):
        named = bool(tag_versions(db, ref))
        matches = _prefix_matches(db, lowered)
        if named and matches:
            raise ModuleNotFound(f"module reference {ref!r} is ambiguous: it is both a name "
                                 "and a digest prefix (write sha256:<hex> or name:latest)")
        if not named:
            return _by_prefix(db, ref, lowered, matches)
    return _latest(db, ref, ref)


def _prefix_matches(db: sqlite3.Connection, hexpart: str) -> list[str]:
    # GLOB is case-sensitive and the prefix is plain hex, so no escaping is needed
    rows = db.execute("SELECT digest FROM modules WHERE digest GLOB ? LIMIT 2",
                      (f"sha256:{hexpart}*",)).fetchall()
    return [r[0] for r in rows]


def _by_prefix(db: sqlite3.Connection, ref: str, hexpart: str,
               matches: list[str] | None = None) -> str:
    hexpart = hexpart.lower()
    if not HEX.fullmatch(hexpart) or len(hexpart) > 64:
        raise ModuleNotFound(f"module reference {ref!r} is not a valid sha256 digest")
    if len(hexpart) < MIN_PREFIX:
        raise ModuleNotFound(f"digest prefix {ref!r} is too short (need at least "
                             f"{MIN_PREFIX} hex characters)")
    if matches is None:
        matches = _prefix_matches(db, hexpart)
    if not matches:
        raise ModuleNotFound(f"no module {ref!r} in the module store")
    if len(matches) > 1:
        raise ModuleNotFound(f"digest prefix {ref!r} is ambiguous: it matches several "
                             "modules (give more characters)")
    return matches[0]


def tag_versions(db: sqlite3.Connection, name: str) -> list[str]:
    """Every version tagged under `name`, lowest first (see `version_key`); the caller holds
    the store's lock."""
    rows = db.execute("SELECT version FROM tags WHERE name=?", (name,)).fetchall()
    return sorted((r[0] for r in rows), key=version_key)


def _latest(db: sqlite3.Connection, ref: str, name: str) -> str:
    rows = db.execute("SELECT version, digest FROM tags WHERE name=?",
                      (name,)).fetchall()
    if not rows:
        raise ModuleNotFound(f"no module {ref!r} in the module store")
    return max(rows, key=lambda r: version_key(r[0]))[1]
