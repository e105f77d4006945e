"""Who may do what: API tokens, roles and tenants (SQLite, ``api.db`` in the data directory).

* **Tokens** are 32 random bytes shown once (``iot_<base64url>``); only their sha256 is stored.
  A slow password hash buys nothing for 256-bit random secrets, and a fast lookup keeps every
  request cheap. A token has a role and, optionally, a tenant: a tenant token sees and changes
  only its own namespace; a token without a tenant acts on every namespace. A token may expire
  (``expires``, a UNIX time); an expired token is refused as such, not as unknown, so its
  holder learns to get a new one instead of suspecting a typo.
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
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..engine.limits import parse_duration_ms
from ..errors import ConfigError
from ..sqlite import open_db

ROLES = ("viewer", "operator", "admin")
#: the longest expiry a token may be given: beyond it, make a token that does not expire
MAX_EXPIRY_S = 3650 * 86400

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL, role TEXT NOT NULL,
    tenant TEXT, created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, expires REAL);
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


class TokenExpired(Exception):
    """A known, unrevoked token presented after its expiry time."""

    def __init__(self, who: Principal, expires: float):
        self.who, self.expires = who, expires
        super().__init__(f"token {who.token_id} expired at {utc(expires)}")


def expiry_seconds(text: str) -> float:
    """'30d' -> 2592000.0. A unit is required: a bare number would mean milliseconds elsewhere
    and seconds to many readers, and a token that lives 1000 times shorter or longer than meant
    is worse than a refused request. Raises ValueError (a 422 naming the field)."""
    if re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*", text):
        raise ValueError(f"{text!r} needs a unit: s, m, h or d (e.g. 12h, 30d)")
    try:
        seconds = parse_duration_ms(text) / 1000
    except ConfigError as e:
        raise ValueError(str(e)) from None
    if seconds <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    if seconds > MAX_EXPIRY_S:
        raise ValueError(f"{text!r} is longer than {MAX_EXPIRY_S // 86400}d; omit it for a token that does not expire")
    return seconds


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SecurityStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # FULL: a token created or revoked must stay so after a power cut
        self._db = open_db(self.path, synchronous="FULL", schema=SCHEMA, what="API tokens")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)")}
        if "expires" not in columns:  # a database from before tokens could expire
            self._db.execute("ALTER TABLE tokens ADD COLUMN expires REAL")
        self._lock = threading.Lock()

    def _x(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- tokens ----------------------------------------------------------------------------
    def create_token(self, name: str, role: str, tenant: str | None = None,
                     expires_in_s: float | None = None) -> tuple[str, str, float | None]:
        """A new token; returns (id, secret, expires). The secret is not stored and cannot be
        shown again; `expires_in_s` None makes a token that never expires."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        token_id = secrets.token_hex(4)
        secret = "iot_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = time.time()
        expires = None if expires_in_s is None else round(now + expires_in_s, 3)
        self._x("INSERT INTO tokens(id, hash, name, role, tenant, created, revoked, expires) "
                "VALUES (?,?,?,?,?,?,0,?)", (token_id, hash_token(secret), name, role, tenant, now, expires))
        return token_id, secret, expires

    def authenticate(self, secret: str) -> Principal | None:
        """The token's principal; None for an unknown or revoked token; raises TokenExpired for
        an expired one."""
        rows = self._x("SELECT id, name, role, tenant, expires FROM tokens WHERE hash = ? AND revoked = 0",
                       (hash_token(secret),))
        if not rows:
            return None
        *fields, expires = rows[0]
        who = Principal(*fields)
        if expires is not None and time.time() >= expires:
            raise TokenExpired(who, expires)
        return who

    def tokens(self) -> list[dict]:
        rows = self._x("SELECT id, name, role, tenant, created, revoked, expires FROM tokens ORDER BY created")
        now = time.time()
        return [{"id": r[0], "name": r[1], "role": r[2], "tenant": r[3], "created": r[4],
                 "revoked": bool(r[5]), "expires": r[6], "expired": r[6] is not None and now >= r[6]}
                for r in rows]

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0", (token_id,))
            return cur.rowcount > 0

    def has_tokens(self) -> bool:
        return bool(self._x("SELECT 1 FROM tokens LIMIT 1"))

    def ensure_admin(self, data_dir: Path) -> Path | None:
        """On first start, create an admin token and write it to ``admin.token`` (mode 0600)
        under `data_dir`; returns that path when it created one. It never expires: it is how
        an operator gets in to make every other token, and a node must not lock its owner out."""
        if self.has_tokens():
            return None
        _, secret, _ = self.create_token("initial-admin", "admin")
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
