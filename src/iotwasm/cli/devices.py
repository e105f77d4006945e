"""`iotwasm devices`: the node's device twins and the commands sent to devices, through its
API (/v1/devices…, docs/devices.md). A device is named ``NAMESPACE/ID``, or ``ID`` in
namespace ``default``."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from .client import CONTEXT, OUTPUT, Client, make_table, fmt_time, emit, fail, out

devices_app = typer.Typer(no_args_is_help=True, help="Devices: twins (reported, desired, delta) and commands.")


def _name(device: str) -> tuple[str, str]:
    ns, _, dev = device.rpartition("/")
    return ns or "default", dev


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        fail(f"{what}: not JSON ({e})")


def _short(doc: Any, limit: int = 60) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit - 1] + "…"


@devices_app.command("list")
def devices_list(namespace: Optional[str] = typer.Option(None, "--namespace", "-n"),
                 silent: Optional[bool] = typer.Option(None, "--silent/--speaking", help="only silent or only "
                                                       "speaking devices"),
                 limit: int = typer.Option(100), context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Devices with their twins' versions, delta and when each was last seen."""
    params: dict[str, Any] = {"limit": limit}
    if namespace:
        params["namespace"] = namespace
    if silent is not None:
        params["silent"] = str(silent).lower()
    data = Client(context).call("GET", "/v1/devices", params=params)
    emit(data, output, make_table(None, ["namespace", "device", "reported", "desired", "delta", "last seen", "silent"],
                              [[d["namespace"], d["device"], f"v{d['reported_version']}", f"v{d['desired_version']}",
                                _short(d["delta"]) if d["delta"] else "-", fmt_time(d["last_seen"]),
                                "yes" if d["silent"] else "no"] for d in data]))


@devices_app.command("get")
def devices_get(device: str = typer.Argument(..., help="NAMESPACE/ID or ID (namespace default)"),
                history: bool = typer.Option(False, "--commands", help="also the commands sent to it"),
                context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """A device's twin: reported and desired state, the delta, versions, silence."""
    ns, dev = _name(device)
    c = Client(context)
    twin = c.call("GET", f"/v1/devices/{ns}/{dev}")
    if history:
        twin["commands"] = c.call("GET", f"/v1/devices/{ns}/{dev}/commands")
    if output == "json":
        return emit(twin, output)
    out.print(f"[bold]{ns}/{dev}[/]  last seen {fmt_time(twin['last_seen'])}"
              f"{'  [yellow]silent[/]' if twin['silent'] else ''}", highlight=False)
    for key in ("reported", "desired", "delta"):
        version = f" (v{twin[key + '_version']})" if key != "delta" else ""
        out.print(f"{key}{version}: {json.dumps(twin[key], sort_keys=True)}", highlight=False, markup=False)
    if history:
        out.print(_commands_table(twin["commands"]))


def _commands_table(rows: list[dict]):
    return make_table("commands", ["id", "command", "status", "attempts", "sent", "by", "result / error"],
                  [[r["id"][:12], r["name"], r["status"], r["attempts"], fmt_time(r["created"]), r["by"],
                    r["error"] or _short(r["result"])] for r in rows])


@devices_app.command("set")
def devices_set(device: str = typer.Argument(..., help="NAMESPACE/ID or ID (namespace default)"),
                patch: str = typer.Argument(..., help="JSON merge patch of the desired state, e.g. "
                                            "'{\"fan\": 3, \"led\": null}'"),
                version: Optional[int] = typer.Option(None, "--version", help="apply only when the desired state "
                                                      "is still at this version (0: none yet)"),
                context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Change a device's desired state; it reaches the device now or when it comes back."""
    ns, dev = _name(device)
    headers = {"If-Match": f'"{version}"'} if version is not None else {}
    twin = Client(context).call("PATCH", f"/v1/devices/{ns}/{dev}/desired", json=_json(patch, "patch"),
                                headers=headers)
    if output == "json":
        return emit(twin, output)
    out.print(f"{ns}/{dev}: desired v{twin['desired_version']}, delta {json.dumps(twin['delta'])}",
              highlight=False, markup=False)


@devices_app.command("command")
def devices_command(device: str = typer.Argument(..., help="NAMESPACE/ID or ID (namespace default)"),
                    name: str = typer.Argument(..., help="command name (devices/{id}/commands/{name})"),
                    payload: Optional[str] = typer.Option(None, "--payload", help="JSON value sent with it"),
                    timeout: str = typer.Option("10s", help="how long each attempt waits for the acknowledgement"),
                    retries: int = typer.Option(3, help="attempts after the first"),
                    wait: float = typer.Option(30.0, help="seconds to wait for the outcome (0: do not wait)"),
                    context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Send a command and print its outcome; exits 1 unless the device acknowledged it."""
    ns, dev = _name(device)
    body = {"name": name, "timeout": timeout, "retries": retries,
            "payload": _json(payload, "--payload") if payload is not None else None}
    rec = Client(context).call("POST", f"/v1/devices/{ns}/{dev}/commands", json=body, params={"wait": wait})
    if output == "json":
        emit(rec, output)
    else:
        outcome = _short(rec["result"]) if rec["status"] == "acked" else rec["error"]
        out.print(f"{ns}/{dev} {name} ({rec['id']}): {rec['status']} after {rec['attempts']} attempt(s)"
                  f"{': ' + outcome if outcome and outcome != 'null' else ''}", highlight=False, markup=False)
    if wait and rec["status"] != "acked":
        raise typer.Exit(1)
