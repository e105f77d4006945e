"""Modules: upload (streamed, optionally tagged and signed), list, inspect, delete.

A module pushed by a tenant belongs to it; one pushed by a token without tenant is shared. A
tenant sees its own and the shared modules only."""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request

from ...errors import IotwasmError
from ...node.bounded_yaml import EXCERPT, excerpt
from ...node.manifests import Deployment
from ...node.node import Node
from ...registry.signing import Signature, SignatureError, SignatureStore
from ..context import ApiContext
from ..deps import Ctx, Operator, Viewer
from ..guard import BodyLimit, GuardedRoute
from ..openapi import errors
from ..policy import PolicyError, check_signed, desired, module_owner
from ..problems import Problem, invalid, not_found
from ..security import Principal

MAX_MODULE = 64 * 1024 * 1024

router = APIRouter(tags=["modules"], route_class=GuardedRoute)


def module_view(ctx: ApiContext, rec, who: Principal) -> dict:
    owners = ctx.security.module_tenants(rec.digest)
    return {"digest": rec.digest, "name": rec.name, "size": rec.size, "abi": rec.abi, "tags": list(rec.tags),
            "added_at": rec.added_at, "signed_by": [s.key_id for s in ctx.signatures.for_digest(rec.digest)],
            "owners": sorted(owners) if who.tenant is None else None,
            "used_by": [n for n, d in ctx.node.deployments.items() if d.module_digest == rec.digest
                        and who.may_see(d.manifest.metadata.namespace)]}


def module_visible(ctx: ApiContext, rec, who: Principal) -> bool:
    if who.tenant is None:
        return True
    owners = ctx.security.module_tenants(rec.digest)
    return who.tenant in owners or "" in owners


def get_module(ctx: ApiContext, ref: str, who: Principal):
    try:
        rec = ctx.node.registry.get(ref)
    except IotwasmError as e:   # the registry's reason, unless it would quote a long reference
        raise not_found(str(e) if len(ref) <= EXCERPT else f"no module {excerpt(ref, quote=True)}") from None
    if not module_visible(ctx, rec, who):
        raise not_found(f"no module {excerpt(ref, quote=True)} in the module store")
    return rec


@router.post("/v1/modules", status_code=201, dependencies=[Depends(BodyLimit(MAX_MODULE))],
             summary="Upload a module (raw wasm body, streamed); optionally tag and sign it",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/wasm": {"schema": {"type": "string", "format": "binary"}}}}})
async def push_module(request: Request, ctx: Ctx, who: Operator, name: str | None = Query(None, max_length=128),
                      version: str | None = Query(None, max_length=128),
                      force: bool = Query(False, description="re-point an existing name:version"),
                      namespace: str | None = Query(None, description="tenant whose signing policy "
                                                    "applies (default: the token's tenant)"),
                      signature: str | None = Query(None, description="base64url of the .sig document")) -> dict:
    node = ctx.node
    ns = namespace if namespace is not None else (who.tenant or "default")
    if not who.may_see(ns):
        await ctx.deny(who, "module.push", name or "", PolicyError(f"namespace {ns!r} is not yours"))
    try:
        owner = module_owner(who, name)
    except PolicyError as e:
        await ctx.deny(who, "module.push", name or "", e, ns)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=node.registry.root)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():   # at most MAX_MODULE bytes (GuardedRoute)
                size += len(chunk)
                f.write(chunk)
        data = await asyncio.to_thread(Path(tmp).read_bytes)
    finally:
        await asyncio.to_thread(Path(tmp).unlink, missing_ok=True)
    if not data:
        raise invalid("empty body: send the module's bytes")
    from ...engine.module import digest_of
    digest = digest_of(data)
    sig = None
    if signature:
        try:
            sig = Signature.from_json(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                                      "signature parameter")
        except (ValueError, SignatureError) as e:
            raise invalid(f"signature parameter: {e}") from None
    try:
        check_signed(ctx.security, _With(ctx.signatures, sig), ns, digest, data)
    except SignatureError as e:
        await ctx.deny(who, "module.push", digest, e, ns)
    try:
        rec = await asyncio.to_thread(node.registry.add, data, name=name or None, version=version or None,
                                      force=force)
    except IotwasmError as e:
        await ctx.record(who, "module.push", digest, str(e), "refused", ns)
        raise
    if sig is not None and sig.digest == digest:
        await asyncio.to_thread(ctx.signatures.add, sig)   # the stores sync every commit: off the loop
    await asyncio.to_thread(ctx.security.own_module, rec.digest, owner)
    await ctx.record(who, "module.push", rec.digest, f"{size} bytes" + (f" as {name}:{version}" if version else ""),
               tenant=ns)
    return module_view(ctx, rec, who)


@router.get("/v1/modules", summary="List modules")
async def list_modules(ctx: Ctx, who: Viewer) -> list[dict]:
    recs = await asyncio.to_thread(ctx.node.registry.list)
    return [module_view(ctx, r, who) for r in recs if module_visible(ctx, r, who)]


@router.get("/v1/modules/{ref:path}", summary="Inspect a module")
async def inspect_module(ref: str, ctx: Ctx, who: Viewer) -> dict:
    rec = get_module(ctx, ref, who)
    return {**module_view(ctx, rec, who), "info": rec.info.to_dict()}


@router.delete("/v1/modules/{ref:path}", summary="Delete a module no deployment uses",
               responses=errors(409, why_409="a deployment uses the module"))
async def delete_module(ref: str, ctx: Ctx, who: Operator) -> dict:
    node = ctx.node
    rec = get_module(ctx, ref, who)
    owners = ctx.security.module_tenants(rec.digest)
    if who.tenant is not None and owners - {who.tenant}:
        await ctx.deny(who, "module.delete", rec.digest, PolicyError(f"module {rec.digest[:19]} is shared with "
                                                               "other tenants; only a node admin can delete it"))
    users = {name for (kind, name), d in desired(node).items()
             if isinstance(d, Deployment) and _uses(node, d, rec.digest)}
    users |= {name for name, d in node.deployments.items() if d.module_digest == rec.digest}
    if users:
        raise Problem(409, "Conflict", f"module {rec.digest[:19]} is used by deployment(s) "
                      f"{', '.join(sorted(users))}", "in-use")
    await asyncio.to_thread(node.registry.remove, rec.digest, True)
    await asyncio.to_thread(ctx.signatures.remove, rec.digest)
    await asyncio.to_thread(ctx.security.disown_module, rec.digest)
    await ctx.record(who, "module.delete", rec.digest)
    return {"deleted": rec.digest}


def _uses(node: Node, d: Deployment, digest: str) -> bool:
    try:
        return node.registry.resolve(d.spec.module) == digest
    except IotwasmError:
        return False


class _With:
    """A signature store view that also offers one signature not stored yet (the upload's)."""

    def __init__(self, store: SignatureStore, extra: Signature | None):
        self.store, self.extra = store, extra

    def for_digest(self, digest: str) -> list[Signature]:
        return [*([self.extra] if self.extra else []), *self.store.for_digest(digest)]
