"""The API's rules routes: list and describe rules with their counters, enable or disable one
or every rule with a tag, delete one.

Rules are created and changed like every other manifest, through ``POST /v1/apply`` (stored by
the node's AppliedManifests and reconciled by its sync loop); a rule whose SQL does not compile
is refused there with its line and column. Enabling and disabling is runtime state, like
suspending a deployment: it works on every rule the caller may see, also on rules of the node's
manifest files, and lasts until that rule's manifest changes (docs/rules.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ...node.manifests import Rule
from ...node.node import Node
from ..context import ApiContext
from ..deps import Ctx, Operator, Viewer
from ..guard import GuardedRoute
from ..openapi import errors
from ..policy import desired
from ..problems import Problem, not_found
from ..security import Principal

COUNTERS = ("received", "matched", "emitted", "errors", "udf_errors", "late", "decode_errors")


class TagBody(BaseModel):
    tag: str = Field(min_length=1, max_length=100, description="every rule with this tag (in the caller's "
                                                                "namespaces)")


def rules_using(node: Node, deployment: str) -> list[str]:
    """Rules (running or applied) that call `deployment` as a function or invoke it."""
    out = []
    for (_kind, name), m in desired(node).items():
        if isinstance(m, Rule) and (any(f.deployment == deployment for f in m.spec.functions)
                               or any(a.invoke is not None and a.invoke.deployment == deployment
                                      for a in m.spec.actions)):
            out.append(name)
    return sorted(out)


router = APIRouter(tags=["rules"], route_class=GuardedRoute)


def _running(node: Node, name: str) -> bool:
    return node.rules is not None and name in node.rules.manifests


def _problem_of(node: Node, name: str) -> str | None:
    return next((p for p in node.last_problems if p.startswith(f"Rule {name}:")), None)


def rule_view(node: Node, name: str, full: bool = False, status: dict | None = None) -> dict:
    manifest = node.rules.manifests[name] if node.rules is not None and _running(node, name) \
        else node.applied.rule(name)
    if manifest is None:
        raise not_found(f"rule {name!r} not found")
    out: dict[str, Any] = {"name": name, "namespace": manifest.metadata.namespace,
                           "source": "file" if node.file_owned("Rule", name) else "api",
                           "tags": list(manifest.spec.tags)}
    st = None
    if node.rules is not None and _running(node, name):
        st = (status if status is not None else node.rules.status()).get(name)
    if st is None:
        out.update(state="pending", enabled=manifest.spec.enabled, **{k: 0 for k in COUNTERS},
                   last_error=_problem_of(node, name), open_windows=0, watermark=None)
    else:
        out.update(state="enabled" if st["enabled"] else "disabled", enabled=st["enabled"],
                   **{k: st.get(k, 0) for k in COUNTERS}, last_error=st.get("last_error"),
                   open_windows=st.get("open_windows", 0), watermark=st.get("watermark"))
    if full:
        out["sql"] = manifest.spec.sql
        if st is not None:
            out["actions"] = st.get("actions", [])
            out["alerts"] = st.get("alerts")
            out["functions"] = st.get("functions")
        out["manifest"] = manifest.model_dump(mode="json", by_alias=True)
        out["events"] = node.state.events(name, limit=20)
    return out


@router.get("/v1/rules", summary="List rules with their state and counters")
async def list_rules(ctx: Ctx, who: Viewer) -> list[dict]:
    node = ctx.node
    status = node.rules.status() if node.rules is not None else {}
    return [rule_view(node, n, status=status) for n in ctx.visible_names(who, "Rule")]


@router.get("/v1/rules/{name}", summary="Describe a rule: SQL, state, counters, last error")
async def get_rule(name: str, ctx: Ctx, who: Viewer) -> dict:
    ctx.visible(who, "Rule", name)
    return rule_view(ctx.node, name, full=True)


@router.delete("/v1/rules/{name}", summary="Delete a rule applied through the API",
               responses=errors(409, why_409="not managed through the API"))
async def delete_rule(name: str, ctx: Ctx, who: Operator) -> dict:
    ns, _ = await ctx.mutable(who, "Rule", name, "rule.delete")
    ctx.node.applied.delete("Rule", name)
    await ctx.node.sync()
    await ctx.record(who, "rule.delete", f"rule/{name}", tenant=ns)
    return {"deleted": name}


async def _switch(ctx: ApiContext, name: str, enabled: bool, who: Principal) -> dict:
    node = ctx.node
    ns = ctx.visible(who, "Rule", name)
    if node.rules is None or not _running(node, name):
        problem = _problem_of(node, name)
        raise Problem(409, "Conflict", f"rule {name} is not running" + (f" ({problem})" if problem else ""),
                      "not-running")
    await node.rules.set_enabled(enabled, names=[name])
    await ctx.record(who, "rule.enable" if enabled else "rule.disable", f"rule/{name}", tenant=ns)
    return rule_view(node, name)


@router.post("/v1/rules/{name}/enable", summary="Enable a rule", responses=errors(409, why_409="not running"))
async def enable_rule(name: str, ctx: Ctx, who: Operator) -> dict:
    return await _switch(ctx, name, True, who)


@router.post("/v1/rules/{name}/disable", summary="Disable a rule (it stops evaluating; its window state is kept)",
             responses=errors(409, why_409="not running"))
async def disable_rule(name: str, ctx: Ctx, who: Operator) -> dict:
    return await _switch(ctx, name, False, who)


async def _switch_tag(ctx: ApiContext, tag: str, enabled: bool, who: Principal) -> dict:
    node = ctx.node
    if node.rules is None:
        return {"tag": tag, "enabled": enabled, "changed": []}
    names = sorted(n for n, m in node.rules.manifests.items()
                   if tag in m.spec.tags and who.may_see(m.metadata.namespace))
    changed = await node.rules.set_enabled(enabled, names=names) if names else []
    await ctx.record(who, "rule.enable" if enabled else "rule.disable", f"rules/tag={tag}",
               ", ".join(changed) or "no rule has the tag")
    return {"tag": tag, "enabled": enabled, "changed": sorted(changed)}


@router.post("/v1/rules/enable", summary="Enable every rule with a tag")
async def enable_tag(body: TagBody, ctx: Ctx, who: Operator) -> dict:
    return await _switch_tag(ctx, body.tag, True, who)


@router.post("/v1/rules/disable", summary="Disable every rule with a tag")
async def disable_tag(body: TagBody, ctx: Ctx, who: Operator) -> dict:
    return await _switch_tag(ctx, body.tag, False, who)
