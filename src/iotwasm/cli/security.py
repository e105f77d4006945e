"""`iotwasm token …` and `iotwasm tenant …`: a node's API tokens and its tenants (quotas,
topic prefix, signing policy), which only an admin token may change.

Split from `client` (the config file, the connection to a node and the output every command
shares).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .client import CONTEXT, OUTPUT, Client, emit
from .objects import get


token_app = typer.Typer(no_args_is_help=True, help="API tokens (admin).")


@token_app.command("create")
def token_create(name: str, role: str = typer.Option(..., help="viewer, operator or admin"),
                 tenant: Optional[str] = typer.Option(None, help="confine the token to this namespace"),
                 expires: Optional[str] = typer.Option(None, help="lifetime, e.g. 12h or 30d (default: never expires)"),
                 context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Create a token; its secret is printed once."""
    data = Client(context).call("POST", "/v1/tokens", json={"name": name, "role": role, "tenant": tenant,
                                                            "expires_in": expires})
    if output == "json":
        emit(data, "json")
    else:
        print(data["token"])


@token_app.command("ls")
def token_ls(context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """List tokens (never their secrets)."""
    get("tokens", None, context, output)


@token_app.command("revoke")
def token_revoke(token_id: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Revoke a token at once."""
    emit(Client(context).call("DELETE", f"/v1/tokens/{token_id}"), "json")


tenant_app = typer.Typer(no_args_is_help=True, help="Tenants: quotas, topic prefix, signing policy (admin).")


@tenant_app.command("set")
def tenant_set(name: str, prefix: str = typer.Option("", help="topic prefix all its topics must start with"),
               max_memory: Optional[str] = typer.Option(None), max_instances: Optional[int] = typer.Option(None),
               max_deployments: Optional[int] = typer.Option(None),
               require_signatures: bool = typer.Option(False, "--require-signatures"),
               context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Create or change a tenant."""
    body = {"topic_prefix": prefix, "max_memory": max_memory, "max_instances": max_instances,
            "max_deployments": max_deployments, "require_signatures": require_signatures}
    emit(Client(context).call("PUT", f"/v1/tenants/{name}", json=body), "json")


@tenant_app.command("trust")
def tenant_trust(name: str, key: Path = typer.Option(..., help="public key PEM (from iotwasm keygen)"),
                 context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Trust a public key for the tenant's modules."""
    emit(Client(context).call("POST", f"/v1/tenants/{name}/keys", json={"public_pem": key.read_text()}), "json")


@tenant_app.command("ls")
def tenant_ls(context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """List tenants."""
    get("tenants", None, context, output)
