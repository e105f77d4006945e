"""Devices: their twins (reported state, desired state, the delta) and the commands sent to
them. Viewers read, operators set desired state and send commands; a tenant token reaches
only the devices of its own namespace (another tenant's device is a 404, like a missing one).

Desired state is changed with a JSON merge patch and compare-and-set: the twin's answer
carries its desired version as an ``ETag``, and a patch sent with ``If-Match`` set to it is
refused with 409 when another writer changed the desired state first. A patch without
``If-Match`` applies to whatever version is current. What the node does with devices:
node/devices.py and node/device_link.py; docs/devices.md.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Body, Header, Query, Response
from pydantic import BaseModel, Field

from ...engine.limits import parse_duration_ms
from ...errors import ConfigError
from ...node.bounded_yaml import excerpt
from ...node.devices import COMMAND_NAME, DEVICE_ID, NAMESPACE, Twin
from ..context import ApiContext
from ..deps import Ctx, Operator, Viewer
from ..guard import GuardedRoute
from ..openapi import errors
from ..problems import invalid, not_found
from ..security import Principal

router = APIRouter(tags=["devices"], route_class=GuardedRoute)

#: the longest a command's answer waits for its outcome (`wait`)
MAX_WAIT_S = 60.0


class CommandBody(BaseModel):
    name: str = Field(..., pattern=COMMAND_NAME.pattern, description="published to devices/{id}/commands/{name}")
    payload: Any = Field(None, description="any JSON value, at most 16 KiB")
    timeout: str = Field("10s", max_length=20, description="how long each attempt waits for the acknowledgement")
    retries: int = Field(3, ge=0, le=20, description="attempts after the first, with a growing delay between")


def _no_device(namespace: str, device: str) -> Exception:
    return not_found(f"no device {excerpt(device, quote=True)} in namespace {excerpt(namespace, quote=True)}")


def _named(who: Principal, namespace: str, device: str) -> None:
    """404 for a device the caller may not see; 422 for a name that can be no device's (a
    device is created by naming it here)."""
    if not who.may_see(namespace):
        raise _no_device(namespace, device)
    if not NAMESPACE.match(namespace) or not DEVICE_ID.match(device):
        raise invalid(f"device {excerpt(namespace)}/{excerpt(device)}: a namespace is lowercase letters, digits "
                      f"and '-'; a device id 1-128 letters, digits or '_.:-'")


async def _twin(ctx: ApiContext, who: Principal, namespace: str, device: str) -> Twin:
    """The device's twin; 404 when it does not exist (a name that cannot be a device's
    included) or is another tenant's."""
    if not who.may_see(namespace) or not NAMESPACE.match(namespace) or not DEVICE_ID.match(device):
        raise _no_device(namespace, device)
    twin = await asyncio.to_thread(ctx.node.devices.get, namespace, device)
    if twin is None:
        raise _no_device(namespace, device)
    return twin


def _etag(twin: Twin) -> str:
    return f'"{twin.desired_version}"'


@router.get("/v1/devices", summary="Devices you may see, with their twins, by namespace and id")
async def list_devices(ctx: Ctx, who: Viewer,
                       namespace: str | None = Query(None, max_length=63),
                       silent: bool | None = Query(None, description="only silent (true) or only speaking (false)"),
                       after: str | None = Query(None, max_length=200, description="'namespace/device' to page from"),
                       limit: int = Query(100, ge=1, le=1000)) -> list[dict]:
    spaces: list[str] | None
    if namespace is not None:
        spaces = [namespace] if who.may_see(namespace) else []
    else:
        spaces = None if who.tenant is None else [who.tenant]
    start: tuple[str, str] | None = None
    if after and "/" in after:
        ns, _, dev = after.partition("/")
        start = (ns, dev)
    twins = await asyncio.to_thread(ctx.node.devices.twins, spaces, silent=silent, after=start, limit=limit)
    return [t.to_dict() for t in twins]


@router.get("/v1/devices/{namespace}/{device}", summary="A device's twin (ETag: its desired version)")
async def get_device(namespace: str, device: str, ctx: Ctx, who: Viewer, response: Response) -> dict:
    twin = await _twin(ctx, who, namespace, device)
    response.headers["ETag"] = _etag(twin)
    return twin.to_dict()


@router.patch("/v1/devices/{namespace}/{device}/desired",
              summary="Change a device's desired state with a JSON merge patch (compare-and-set with If-Match)",
              responses=errors(409, why_409="If-Match names another version than the current desired version"))
async def patch_desired(namespace: str, device: str, ctx: Ctx, who: Operator, response: Response,
                        patch: dict[str, Any] = Body(..., description="JSON merge patch (RFC 7396): null removes "
                                                     "a key"),
                        if_match: str | None = Header(None, max_length=40, description="the desired version "
                                                      "read (the twin's ETag); 0 for a device without one")) -> dict:
    _named(who, namespace, device)
    expect = None
    if if_match is not None:
        try:
            expect = int(if_match.strip().removeprefix("W/").strip('"'))
        except ValueError:
            raise invalid(f"If-Match {excerpt(if_match, quote=True)}: a desired version (the twin's ETag)") from None
    target = f"device/{namespace}/{device}"
    try:
        twin = await ctx.node.device_link.set_desired(namespace, device, patch, expect)
    except ConfigError as e:
        raise invalid(str(e)) from None
    await ctx.record(who, "device.desired", target, f"version {twin.desired_version}: "
                     f"{excerpt(json.dumps(patch), limit=200)}", tenant=namespace)
    response.headers["ETag"] = _etag(twin)
    return twin.to_dict()


@router.post("/v1/devices/{namespace}/{device}/commands", status_code=202,
             summary="Send a command to a device over MQTT; its outcome is in the command history")
async def send_command(namespace: str, device: str, body: CommandBody, ctx: Ctx, who: Operator,
                       wait: float = Query(0, ge=0, le=MAX_WAIT_S, description="seconds to wait for the "
                                           "outcome before answering")) -> dict:
    twin = await _twin(ctx, who, namespace, device)
    try:
        timeout_s = parse_duration_ms(body.timeout) / 1000
        rec = await ctx.node.device_link.command(twin, body.name, body.payload, who.actor,
                                                 timeout_s=timeout_s, retries=body.retries)
    except ConfigError as e:
        raise invalid(str(e)) from None
    await ctx.record(who, "device.command", f"device/{namespace}/{device}",
                     f"{body.name} ({rec['id']})", tenant=namespace)
    if wait:
        await ctx.node.device_link.wait(rec["id"], wait)
    return await asyncio.to_thread(ctx.node.devices.command, rec["id"]) or rec


@router.get("/v1/devices/{namespace}/{device}/commands", summary="A device's commands and their outcomes, newest first")
async def list_commands(namespace: str, device: str, ctx: Ctx, who: Viewer,
                        limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    twin = await _twin(ctx, who, namespace, device)
    return await asyncio.to_thread(ctx.node.devices.commands, twin, limit)
