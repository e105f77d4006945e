"""Who may do what: API tokens, roles and tenants (SQLite, ``api.db`` in the data directory).

* **Tokens** are 32 random bytes shown once (``iot_<base64url>``); only their sha256 is stored.
  A slow password hash buys nothing for 256-bit random secrets, and a fast lookup keeps every
  request cheap. A token has a role and, optionally, a tenant: a tenant token sees and changes
  only its own namespace; a token without a tenant acts on every namespace.
* **Roles** are ordered: viewer (read) < operator (apply, scale, suspend, delete, push
  modules) < admin (tokens, tenants, trusted keys, audit).
* **Tenants** are manifest namespaces. Each has quotas (total memory of all replicas,
  instances, deployments), a topic prefix every topic of its deployments and routes must start
  with, trusted signing keys and whether modules must be signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..sqlite import open_db

ROLES = ("viewer", "operator", "admin")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL, role TEXT NOT NULL,
    tenant TEXT, created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trusted_keys (
    tenant TEXT NOT NULL, key_id TEXT NOT NULL, public_pem TEXT NOT NULL, PRIMARY KEY (tenant, key_id));
CREATE TABLE IF NOT EXISTS module_owners (digest TEXT NOT NULL, tenant TEXT NOT NULL, PRIMARY KEY (digest, tenant));
"""


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    token_id: str
    name: str
    role: str
    tenant: str | None  # None: every namespace

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def may_see(self, namespace: str) -> bool:
        return self.tenant is None or self.tenant == namespace

    @property
    def actor(self) -> str:
        return f"{self.name} ({self.token_id})"


@dataclass
class Tenant:
    name: str
    topic_prefix: str = ""           # "" = no confinement
    max_memory: str | None = None    # e.g. "256Mi": sum over replicas of resources.memory
    max_instances: int | None = None
    max_deployments: int | None = None
    require_signatures: bool = False
    trusted_keys: list[str] = field(default_factory=list)  # key ids (read-only view)

    def to_dict(self) -> dict:
        return asdict(self)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SecurityStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # FULL: a token created or revoked must stay so after a power cut
        self._db = open_db(self.path, synchronous="FULL", schema=SCHEMA)
        self._lock = threading.Lock()

    def _x(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- tokens ----------------------------------------------------------------------------
    def create_token(self, name: str, role: str, tenant: str | None = None) -> tuple[str, str]:
        """A new token; returns (id, secret). The secret is not stored and cannot be shown again."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        token_id = secrets.token_hex(4)
        secret = "iot_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self._x("INSERT INTO tokens VALUES (?,?,?,?,?,?,0)",
                (token_id, hash_token(secret), name, role, tenant, time.time()))
        return token_id, secret

    def authenticate(self, secret: str) -> Principal | None:
        rows = self._x("SELECT id, name, role, tenant FROM tokens WHERE hash = ? AND revoked = 0",
                       (hash_token(secret),))
        return Principal(*rows[0]) if rows else None

    def tokens(self) -> list[dict]:
        rows = self._x("SELECT id, name, role, tenant, created, revoked FROM tokens ORDER BY created")
        return [{"id": r[0], "name": r[1], "role": r[2], "tenant": r[3], "created": r[4],
                 "revoked": bool(r[5])} for r in rows]

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0", (token_id,))
            return cur.rowcount > 0

    def has_tokens(self) -> bool:
        return bool(self._x("SELECT 1 FROM tokens LIMIT 1"))

    def ensure_admin(self, data_dir: Path) -> Path | None:
        """On first start, create an admin token and write it to ``admin.token`` (mode 0600)
        under `data_dir`; returns that path when it created one."""
        if self.has_tokens():
            return None
        _, secret = self.create_token("initial-admin", "admin")
        path = Path(data_dir) / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return path

    # -- tenants ---------------------------------------------------------------------------
    def put_tenant(self, t: Tenant) -> None:
        spec = {k: v for k, v in t.to_dict().items() if k not in ("name", "trusted_keys")}
        self._x("INSERT OR REPLACE INTO tenants VALUES (?,?)", (t.name, json.dumps(spec)))

    def tenant(self, name: str) -> Tenant | None:
        rows = self._x("SELECT spec FROM tenants WHERE name = ?", (name,))
        if not rows:
            return None
        keys = [r[0] for r in self._x("SELECT key_id FROM trusted_keys WHERE tenant = ? ORDER BY key_id", (name,))]
        return Tenant(name=name, trusted_keys=keys, **json.loads(rows[0][0]))

    def tenants(self) -> list[Tenant]:
        return [t for (n,) in self._x("SELECT name FROM tenants ORDER BY name") if (t := self.tenant(n))]

    def delete_tenant(self, name: str) -> bool:
        found = bool(self._x("SELECT 1 FROM tenants WHERE name = ?", (name,)))
        self._x("DELETE FROM tenants WHERE name = ?", (name,))
        self._x("DELETE FROM trusted_keys WHERE tenant = ?", (name,))
        return found

    # -- trusted keys ----------------------------------------------------------------------
    def trust(self, tenant: str, key_id: str, public_pem: str) -> None:
        self._x("INSERT OR REPLACE INTO trusted_keys VALUES (?,?,?)", (tenant, key_id, public_pem))

    def distrust(self, tenant: str, key_id: str) -> bool:
        found = bool(self._x("SELECT 1 FROM trusted_keys WHERE tenant = ? AND key_id = ?", (tenant, key_id)))
        self._x("DELETE FROM trusted_keys WHERE tenant = ? AND key_id = ?", (tenant, key_id))
        return found

    def trusted_keys(self, tenant: str) -> dict[str, str]:
        return dict(self._x("SELECT key_id, public_pem FROM trusted_keys WHERE tenant = ?", (tenant,)))

    # -- module ownership ------------------------------------------------------------------
    def own_module(self, digest: str, tenant: str) -> None:
        self._x("INSERT OR IGNORE INTO module_owners VALUES (?,?)", (digest, tenant))

    def module_tenants(self, digest: str) -> set[str]:
        return {r[0] for r in self._x("SELECT tenant FROM module_owners WHERE digest = ?", (digest,))}

    def disown_module(self, digest: str, tenant: str | None = None) -> None:
        if tenant is None:
            self._x("DELETE FROM module_owners WHERE digest = ?", (digest,))
        else:
            self._x("DELETE FROM module_owners WHERE digest = ? AND tenant = ?", (digest, tenant))
