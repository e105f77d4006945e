"""``POST /v1/apply``: manifests (YAML or JSON documents) checked against the caller's tenant
policy, stored by the node and reconciled by its sync loop, like the node's own files."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from ...node.manifests import ManifestError, parse_documents
from ..deps import Ctx, Operator
from ..guard import BodyLimit, GuardedRoute
from ..metrics import subject_of
from ..policy import PolicyError, QuotaExceeded, admit_manifests
from ..problems import Problem

MAX_MANIFEST = 1024 * 1024

router = APIRouter(tags=["manifests"], route_class=GuardedRoute)


class Applied(BaseModel):
    kind: str
    name: str
    namespace: str
    action: str


class ApplyResult(BaseModel):
    applied: list[Applied]
    problems: list[str]


@router.post("/v1/apply", summary="Apply manifests (YAML or JSON documents)", response_model=ApplyResult,
             dependencies=[Depends(BodyLimit(MAX_MANIFEST))],
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/yaml": {"schema": {"type": "string"}}}}})
async def apply(request: Request, ctx: Ctx, who: Operator) -> ApplyResult:
    node = ctx.node
    body = await request.body()   # at most MAX_MANIFEST bytes (GuardedRoute)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(422, "Invalid request", "manifests must be UTF-8 text", "validation") from None
    try:
        manifests = parse_documents(text, "request")
    except ManifestError as e:
        raise Problem(422, "Invalid manifest", "; ".join(e.problems), "manifest") from None
    if not manifests:
        raise Problem(422, "Invalid manifest", "no manifest documents in the body", "manifest")
    names = [(m.kind, m.name) for m in manifests]
    if len(set(names)) != len(names):
        raise Problem(422, "Invalid manifest", "a manifest is given twice in one request", "manifest")
    try:
        admit_manifests(node, ctx.security, who, manifests)
    except (PolicyError, QuotaExceeded) as e:
        await ctx.deny(who, "apply", ", ".join(f"{k}/{n}" for k, n in names), e, manifests[0].metadata.namespace)
    out = []
    for m in manifests:
        old = node.applied.get(m.kind, m.name)
        action = "created" if old is None else ("unchanged" if old == m else "configured")
        node.applied.put(m, who.actor)
        out.append(Applied(kind=m.kind, name=m.name, namespace=m.metadata.namespace, action=action))
        await ctx.record(who, "apply", f"{m.kind.lower()}/{m.name}", action, tenant=m.metadata.namespace)
    problems = [p for p in await node.sync() if subject_of(p) in set(names)]   # about these objects only
    if node.last_manifest_error:
        problems.append("stored, but not reconciled while the node's manifest files are invalid"
                        + (": " + node.last_manifest_error.splitlines()[0] if who.tenant is None else ""))
    return ApplyResult(applied=out, problems=problems)
