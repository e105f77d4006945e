"""Helpers for the tenancy tests (tests/test_tenancy_names.py, tests/test_tenancy_storage.py),
through the real API: a module told apart from echo (`COUNTER_WASM`), a module pushed and
manifests applied as a client (`push`, `apply`, from apinode), confined tenants each with an operator client
(`tenants`), and a deployment awaited until it runs (`running`)."""

from __future__ import annotations

import wasmtime

from apinode import apply, push, wait_for
from conftest import module_path

# a module that answers every input with a counter kept in its own memory: told apart from echo
COUNTER_WASM = bytes(wasmtime.wat2wasm(module_path("counter_state.wat").read_text()))

__all__ = ["COUNTER_WASM", "apply", "push", "running", "tenants"]


def tenants(api, *names: str) -> dict:
    """Confined tenants (topic prefix `<name>/`), each with an operator client."""
    out = {}
    for name in names:
        assert api.admin.put(f"/v1/tenants/{name}", json={"topic_prefix": f"{name}/"}).status_code == 200
        out[name] = api.client(api.token("operator", name, f"{name}-ops"))
    return out


def running(api, name: str) -> dict:
    return wait_for(lambda: (v := api.admin.get(f"/v1/deployments/{name}").json()).get("state") == "running" and v,
                    what=f"deployment {name} running")
