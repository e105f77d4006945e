"""API layer: the node's management REST API, its security (tokens, roles, tenants, signed
modules), the hash-chained audit log and Prometheus metrics.

Public surface:
- `ApiServer(node, ApiSettings(...))`: serve the API in the node's event loop.
- `ApiContext`, `create_app`: the FastAPI app over a node (tests, embedding).
- `AuditLog`, `SecurityStore`: the audit chain and the token/tenant store.

See docs/api.md and docs/security.md.
"""

from __future__ import annotations

from .app import ApiContext, create_app
from .audit import AuditLog
from .security import ROLES, SecurityStore, Tenant
from .server import ApiServer, ApiSettings

__all__ = ["ApiContext", "ApiServer", "ApiSettings", "AuditLog", "ROLES", "SecurityStore", "Tenant",
           "create_app"]
