"""The API's rules routes: list and describe rules with their counters, enable or disable one
or every rule with a tag, delete one.

Rules are created and changed like every other manifest, through ``POST /v1/apply`` (stored by
the node's AppliedManifests and reconciled by its sync loop); a rule whose SQL does not compile
is refused there with its line and column. Enabling and disabling is runtime state, like
suspending a deployment: it works on every rule the caller may see, also on rules of the node's
manifest files, and lasts until that rule's manifest changes (docs/rules.md).
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from ..node.node import Node
from .policy import desired
from .security import Principal

COUNTERS = ("received", "matched", "emitted", "errors", "udf_errors", "late", "decode_errors")


class TagBody(BaseModel):
    tag: str = Field(min_length=1, max_length=100, description="every rule with this tag (in the caller's "
                                                                "namespaces)")


def rules_using(node: Node, deployment: str) -> list[str]:
    """Rules (running or applied) that call `deployment` as a function or invoke it."""
    out = []
    for (kind, name), m in desired(node).items():
        if kind == "Rule" and (any(f.deployment == deployment for f in m.spec.functions)
                               or any(a.invoke is not None and a.invoke.deployment == deployment
                                      for a in m.spec.actions)):
            out.append(name)
    return sorted(out)


def install(app: FastAPI, node: Node, *, viewer: Callable, operator: Callable, audit: Callable,
            visible: Callable, mutable: Callable) -> None:
    """Add the /v1/rules routes to `app`, with the app's own auth, audit and ownership helpers."""
    from .app import Problem

    def running(name: str) -> bool:
        return node.rules is not None and name in node.rules.manifests

    def problem_of(name: str) -> str | None:
        return next((p for p in node.last_problems if p.startswith(f"Rule {name}:")), None)

    def rule_view(name: str, full: bool = False, status: dict | None = None) -> dict:
        manifest = node.rules.manifests[name] if running(name) else node.applied.get("Rule", name)
        out: dict[str, Any] = {"name": name, "namespace": manifest.metadata.namespace,
                               "source": "file" if node.file_owned("Rule", name) else "api",
                               "tags": list(manifest.spec.tags)}
        st = (status if status is not None else node.rules.status()).get(name) if running(name) else None
        if st is None:
            out.update(state="pending", enabled=manifest.spec.enabled, **{k: 0 for k in COUNTERS},
                       last_error=problem_of(name), open_windows=0, watermark=None)
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

    @app.get("/v1/rules", tags=["rules"], summary="List rules with their state and counters")
    async def list_rules(who: Principal = Depends(viewer)) -> list[dict]:
        names = {n for (k, n), m in desired(node).items() if k == "Rule" and who.may_see(m.metadata.namespace)}
        status = node.rules.status() if node.rules is not None else {}
        return [rule_view(n, status=status) for n in sorted(names)]

    @app.get("/v1/rules/{name}", tags=["rules"], summary="Describe a rule: SQL, state, counters, last error")
    async def get_rule(name: str, who: Principal = Depends(viewer)) -> dict:
        visible(who, "Rule", name)
        return rule_view(name, full=True)

    @app.delete("/v1/rules/{name}", tags=["rules"], summary="Delete a rule applied through the API")
    async def delete_rule(name: str, who: Principal = Depends(operator)) -> dict:
        ns, _ = mutable(who, "Rule", name, "rule.delete")
        node.applied.delete("Rule", name)
        await node.sync()
        audit(who, "rule.delete", f"rule/{name}", tenant=ns)
        return {"deleted": name}

    async def switch(name: str, enabled: bool, who: Principal) -> dict:
        ns = visible(who, "Rule", name)
        if not running(name):
            raise Problem(409, "Conflict", f"rule {name} is not running"
                          + (f" ({problem_of(name)})" if problem_of(name) else ""), "not-running")
        await node.rules.set_enabled(enabled, names=[name])
        audit(who, "rule.enable" if enabled else "rule.disable", f"rule/{name}", tenant=ns)
        return rule_view(name)

    @app.post("/v1/rules/{name}/enable", tags=["rules"], summary="Enable a rule")
    async def enable_rule(name: str, who: Principal = Depends(operator)) -> dict:
        return await switch(name, True, who)

    @app.post("/v1/rules/{name}/disable", tags=["rules"],
              summary="Disable a rule (it stops evaluating; its window state is kept)")
    async def disable_rule(name: str, who: Principal = Depends(operator)) -> dict:
        return await switch(name, False, who)

    async def switch_tag(tag: str, enabled: bool, who: Principal) -> dict:
        if node.rules is None:
            return {"tag": tag, "enabled": enabled, "changed": []}
        names = sorted(n for n, m in node.rules.manifests.items()
                       if tag in m.spec.tags and who.may_see(m.metadata.namespace))
        changed = await node.rules.set_enabled(enabled, names=names) if names else []
        audit(who, "rule.enable" if enabled else "rule.disable", f"rules/tag={tag}",
              ", ".join(changed) or "no rule has the tag")
        return {"tag": tag, "enabled": enabled, "changed": sorted(changed)}

    @app.post("/v1/rules/enable", tags=["rules"], summary="Enable every rule with a tag")
    async def enable_tag(body: TagBody, who: Principal = Depends(operator)) -> dict:
        return await switch_tag(body.tag, True, who)

    @app.post("/v1/rules/disable", tags=["rules"], summary="Disable every rule with a tag")
    async def disable_tag(body: TagBody, who: Principal = Depends(operator)) -> dict:
        return await switch_tag(body.tag, False, who)
