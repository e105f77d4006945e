"""The CLI as a client of a node's management API (kubectl/docker habits).

Which node and which token: ``--context NAME`` or the config file's current context, or
``IOTWASM_URL`` / ``IOTWASM_TOKEN`` (which win over the file). The config file is
``$IOTWASM_CONFIG`` or ``~/.config/iotwasm/config.yaml``::

    current-context: edge1
    contexts:
      edge1: {url: "http://127.0.0.1:8282", token: "iot_…", ca: null}

Every command prints tables (rich) or, with ``--output json``, the API's JSON for scripts.
Errors print the API's problem ``detail`` on one line and exit 1.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, NoReturn

import httpx
import typer
import yaml
from rich import markup
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

out = Console()
err = Console(stderr=True)

CONTEXT = typer.Option(None, "--context", help="context of the config file (default: current)")
OUTPUT = typer.Option("table", "--output", "-o", help="table or json")


class ClientError(Exception):
    pass


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


# --- config ---------------------------------------------------------------------------------

def config_path() -> Path:
    return Path(os.environ.get("IOTWASM_CONFIG") or Path.home() / ".config" / "iotwasm" / "config.yaml")


def load_config() -> dict:
    p = config_path()
    if not p.exists():
        return {"contexts": {}}
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        fail(f"{p}: not valid YAML: {e}")
    if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
        fail(f"{p}: expected a mapping with 'contexts'")
    data.setdefault("contexts", {})
    return data


def save_config(cfg: dict) -> None:
    p = config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds tokens
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def target(context: str | None) -> tuple[str, str | None, Any]:
    cfg = load_config()
    name = context or os.environ.get("IOTWASM_CONTEXT") or cfg.get("current-context")
    ctx = cfg["contexts"].get(name, {}) if name else {}
    if context and not ctx:
        fail(f"no context {context!r} in {config_path()}")
    url = os.environ.get("IOTWASM_URL") or ctx.get("url")
    token = os.environ.get("IOTWASM_TOKEN") or ctx.get("token")
    if not url:
        fail("which node? set IOTWASM_URL or add a context: iotwasm context set NAME --url URL --token-file FILE")
    return url.rstrip("/"), token, ctx.get("ca") or True


class Client:
    def __init__(self, context: str | None):
        url, token, verify = target(context)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60, verify=verify)
        self.url = url

    def call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            fail(f"{self.url}: {e}")
        return self._result(r)

    @staticmethod
    def _result(r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                p = r.json()
                detail = p.get("detail") or p
            except ValueError:
                detail = r.text[:500]
            fail(f"{r.status_code} {detail}")
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text

    def stream(self, path: str, **kw) -> Iterator[dict]:
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(60, read=None), **kw) as r:
                if r.status_code >= 400:
                    r.read()
                    self._result(r)
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.HTTPError as e:
            fail(f"{self.url}: {e}")


def emit(data: Any, output: str, table: Table | None = None) -> None:
    if output == "json" or table is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        show(table)


def show(table: Table) -> None:
    """A table on a terminal; piped or redirected, plain columns as wide as their longest
    value (nothing cut to an assumed 80 columns, no box characters for `grep` and `awk`)."""
    if out.is_terminal:
        out.print(table)
        return
    table.box = None
    table.pad_edge = False
    table.expand = False
    wide = Console(width=100_000, no_color=True, highlight=False, file=sys.stdout, color_system=None)
    with wide.capture() as cap:
        wide.print(table)
    sys.stdout.write("\n".join(line.rstrip() for line in cap.get().splitlines()) + "\n")
    sys.stdout.flush()


def _without_nulls(v: Any) -> Any:
    """`v` without null entries at any depth (a describe shows what is set, not every unset
    optional field)."""
    if isinstance(v, dict):
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_nulls(x) for x in v]
    return v


def _table(title: str | None, cols: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, header_style="bold", title_justify="left")
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*["-" if v is None else str(v) for v in r])
    return t


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


# --- commands -------------------------------------------------------------------------------

def apply(files: List[Path] = typer.Option(..., "--filename", "-f", help="manifest file or directory (repeatable)"),
          wait: float = typer.Option(0.0, "--wait", help="seconds to follow the rollout of changed deployments "
                                                          "until their health gate decides (0: do not wait)"),
          context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Apply manifests to the node (created / configured / unchanged)."""
    texts = []
    for f in files:
        paths = sorted([*f.glob("*.yaml"), *f.glob("*.yml")]) if f.is_dir() else [f]
        for p in paths:
            try:
                texts.append(p.read_text())
            except OSError as e:
                fail(f"{p}: cannot read: {e.strerror}")
    body = "\n---\n".join(texts)
    res = Client(context).call("POST", "/v1/apply", content=body.encode(),
                               headers={"Content-Type": "application/yaml"})
    emit(res, output, _table(None, ["kind", "name", "namespace", "action"],
                             [[a["kind"], a["name"], a["namespace"], a["action"]] for a in res["applied"]]))
    for p in res["problems"]:
        err.print(f"[red]problem:[/] {p}", highlight=False, soft_wrap=True)
    if res["problems"]:
        raise typer.Exit(1)
    changed = [a["name"] for a in res["applied"] if a["kind"] == "Deployment" and a["action"] != "unchanged"]
    if wait > 0 and changed:
        outcome = follow_rollout(Client(context), changed, wait, show=output != "json")
        if output == "json":
            print(json.dumps(outcome, indent=2))
        if any(v != "serving" for v in outcome.values()):
            raise typer.Exit(1)


def follow_rollout(c: "Client", names: list[str], timeout: float, show: bool = True) -> dict[str, str]:
    """Poll each deployment's newest revision until it is no longer gating; a progress line
    per deployment. Returns name → final status (serving, rolled-back, refused or gating)."""
    status: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    progress = Progress("[progress.description]{task.description}", BarColumn(), "{task.fields[status]}",
                        console=err, disable=not show)
    with progress:
        tasks = {n: progress.add_task(f"rollout {n}", total=1, status="gating") for n in names}
        while True:
            for n in names:
                hist = c.call("GET", f"/v1/deployments/{n}/history")
                status[n] = hist[-1]["status"] if hist else "pending"
                done = status[n] not in ("gating", "pending")
                progress.update(tasks[n], completed=1 if done else 0, status=status[n])
            if all(v not in ("gating", "pending") for v in status.values()) or time.monotonic() > deadline:
                return status
            time.sleep(0.2)


KINDS = {"deployments": "deployments", "deployment": "deployments", "deploy": "deployments",
         "routes": "routes", "route": "routes", "modules": "modules", "module": "modules",
         "tenants": "tenants", "tenant": "tenants", "tokens": "tokens", "events": "events",
         "rules": "rules", "rule": "rules"}


def _kind(kind: str) -> str:
    if kind.lower() not in KINDS:
        fail(f"unknown kind {kind!r}: one of deployments, routes, rules, modules, tenants, tokens, events")
    return KINDS[kind.lower()]


def _deployments_table(items: list[dict]) -> Table:
    return _table(None, ["name", "namespace", "state", "rev", "replicas", "messages", "outputs", "errors",
                         "restarts", "module"],
                  [[d["name"], d["namespace"], d["state"], d.get("revision"), d.get("replicas"),
                    d.get("messages", 0), d.get("outputs", 0),
                    ", ".join(f"{k} {v}" for k, v in (d.get("errors") or {}).items()) or "-",
                    d.get("restarts", 0), d["module"]] for d in items])


def _rules_table(items: list[dict]) -> Table:
    return _table(None, ["name", "namespace", "state", "tags", "received", "matched", "emitted", "errors",
                         "late", "last error"],
                  [[r["name"], r["namespace"], r["state"], ", ".join(r["tags"]) or "-", r["received"],
                    r["matched"], r["emitted"], r["errors"] + r["udf_errors"] + r["decode_errors"], r["late"],
                    r["last_error"]] for r in items])


def get(kind: str = typer.Argument(..., help="deployments, routes, rules, modules, tenants, tokens, events"),
        name: Optional[str] = typer.Argument(None), context: Optional[str] = CONTEXT,
        output: str = OUTPUT) -> None:
    """List objects of a kind, or show one."""
    k = _kind(kind)
    c = Client(context)
    if name:
        if k == "events":
            data = c.call("GET", "/v1/events", params={"object": name})
        else:
            data = c.call("GET", f"/v1/{k}/{name}")
        emit(data, "json" if output == "json" else "yaml-ish", None)
        return
    data = c.call("GET", f"/v1/{k}")
    if k == "deployments":
        t = _deployments_table(data)
    elif k == "routes":
        t = _table(None, ["name", "namespace", "state", "source", "steps", "sinks", "received", "delivered",
                          "dead letters", "queued"],
                   [[r["name"], r["namespace"], r["state"], r["source"], " → ".join(r["steps"]) or "-",
                     ", ".join(r["sinks"]), r.get("received"), r.get("delivered"), r.get("dead_letters"),
                     r.get("queued")] for r in data])
    elif k == "rules":
        t = _rules_table(data)
    elif k == "modules":
        t = _table(None, ["digest", "name", "tags", "abi", "size", "signed by", "used by"],
                   [[m["digest"][:19], m["name"], ", ".join(m["tags"]) or "-", m["abi"], f"{m['size']:,}",
                     ", ".join(m["signed_by"]) or "-", ", ".join(m["used_by"]) or "-"] for m in data])
    elif k == "tenants":
        t = _table(None, ["name", "topic prefix", "memory", "instances", "deployments", "signatures", "keys"],
                   [[x["name"], x["topic_prefix"] or "-", x["max_memory"], x["max_instances"],
                     x["max_deployments"], "required" if x["require_signatures"] else "-",
                     ", ".join(x["trusted_keys"]) or "-"] for x in data])
    elif k == "tokens":
        t = _table(None, ["id", "name", "role", "tenant", "created", "expires", "revoked"],
                   [[x["id"], x["name"], x["role"], x["tenant"], _ts(x["created"]),
                     _ts(x.get("expires")) + (" (expired)" if x.get("expired") else ""), x["revoked"]]
                    for x in data])
    else:
        t = _table(None, ["time", "kind", "object", "message"],
                   [[_ts(e["ts"]), e["kind"], e["object"], e["message"]] for e in data])
    emit(data, output, t)


def ps(context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Deployments (WASM containers) with their state and counters."""
    data = Client(context).call("GET", "/v1/deployments")
    emit(data, output, _deployments_table(data))


def describe(kind: str = typer.Argument(..., help="deployment, route, rule, module or tenant"),
             name: Optional[str] = typer.Argument(None), context: Optional[str] = CONTEXT,
             output: str = OUTPUT) -> None:
    """Everything about one object: state, manifest, instances, recent events (and a route's
    recent dead letters)."""
    if name is None:
        _which_kind(kind, context)
    k = _kind(kind)
    data = Client(context).call("GET", f"/v1/{k}/{name}")
    if output == "json":
        emit(data, "json")
        return
    t = Table(show_header=False, box=None)
    t.add_column(style="bold cyan")
    t.add_column()
    for key, v in data.items():
        if key in ("manifest", "events", "instances", "dead_letters_recent", "info") or v is None:
            continue
        v = _without_nulls(v)
        t.add_row(key, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    show(t)
    if data.get("instances"):
        show(_table("instances", ["#", "calls", "messages", "outputs", "dead letters", "memory",
                                       "peak", "fuel", "avg ms", "exec ms", "last used"],
                         [[i["index"], i["calls"], i["messages"], i["outputs"], i["dead_letters"],
                           _mib(i.get("memory_bytes")), _mib(i.get("peak_memory_bytes")), i["fuel_used"],
                           i["avg_latency_ms"], i.get("execution_ms"), _ts(i.get("last_used"))]
                          for i in data["instances"]]))
    if data.get("dead_letters_recent"):
        show(_table("recent dead letters", ["id", "time", "step", "kind", "error", "topic", "payload"],
                    [[d.get("id"), _ts(d["ts"]), d.get("step") or "-", d["kind"], d["error"], d["topic"],
                      _preview(d.get("payload", ""))] for d in data["dead_letters_recent"]]))
    if data.get("events"):
        show(_table("events", ["time", "kind", "message"],
                    [[_ts(e["ts"]), e["kind"], e["message"]] for e in data["events"]]))
    if data.get("manifest"):
        out.print("[bold]manifest[/]")
        out.print(markup.escape(yaml.safe_dump(_without_nulls(data["manifest"]), sort_keys=False)),
                  highlight=False, soft_wrap=True)


def _preview(payload: str, limit: int = 60) -> str:
    from ..node.logs import printable   # a payload is device data: never raw on a terminal

    text = printable(payload)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _which_kind(name: str, context: str | None) -> None:
    """`describe NAME` without a kind: say which kinds have an object of that name and how to
    ask for it, instead of typer's bare "missing argument"."""
    if name.lower() in KINDS:
        fail(f"which {KINDS[name.lower()][:-1]}? iotwasm describe {name} NAME "
             f"(list them: iotwasm get {KINDS[name.lower()]})")
    c = Client(context)
    found = []
    for kind in ("deployments", "routes", "rules", "modules", "tenants"):
        r = c.http.get(f"/v1/{kind}/{name}")
        if r.status_code == 200:
            found.append(kind[:-1])
    if found:
        fail("describe needs a kind first: " + " or ".join(f"iotwasm describe {k} {name}" for k in found))
    fail(f"describe needs a kind and a name (iotwasm describe deployment|route|rule|module|tenant NAME); "
         f"no object is named {name!r}")


def logs(name: str = typer.Argument(..., help="deployment"), follow: bool = typer.Option(False, "--follow", "-f"),
         since: int = typer.Option(0, help="only lines after this sequence number"),
         tail: int = typer.Option(200, help="at most this many earlier lines"),
         context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Guest log lines of a deployment (host log calls and WASI stderr); -f follows them."""
    # the node escapes them too: a guest's line never reaches the terminal raw
    from ..node.logs import printable

    c = Client(context)
    params = {"since": since, "limit": tail}

    def show(line: dict) -> None:
        if output == "json":
            print(json.dumps(line), flush=True)
        else:
            out.print(f"[dim]{_ts(line['ts'])}[/] {line['level']:<7} {markup.escape(printable(line['text']))}",
                      highlight=False)
            sys.stdout.flush()

    if not follow:
        for line in c.call("GET", f"/v1/deployments/{name}/logs", params=params):
            show(line)
        return
    try:
        for line in c.stream(f"/v1/deployments/{name}/logs", params={**params, "follow": "true"}):
            show(line)
    except KeyboardInterrupt:
        pass


def scale(name: str, replicas: str = typer.Argument(..., help="a number (fixed), or MIN..MAX (instances on demand)"),
          context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Set a deployment's number of replicas, or the range the node scales it within."""
    low, sep, high = replicas.partition("..")
    if not (low.isdigit() and (high.isdigit() if sep else True)):
        fail(f"replicas {replicas!r}: a number, or MIN..MAX such as 0..8")
    body = {"min": int(low), "max": int(high)} if sep else {"replicas": int(low)}
    data = Client(context).call("POST", f"/v1/deployments/{name}/scale", json=body)
    emit(data, output, _deployments_table([data]))


def suspend(name: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Stop a deployment taking batches (messages wait in its routes)."""
    data = Client(context).call("POST", f"/v1/deployments/{name}/suspend")
    emit(data, output, _deployments_table([data]))


def resume(name: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Resume a suspended deployment."""
    data = Client(context).call("POST", f"/v1/deployments/{name}/resume")
    emit(data, output, _deployments_table([data]))


def rollback(name: str, to: Optional[int] = typer.Option(None, "--to", help="revision (default: the previous one)"),
             context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Roll a deployment back to an earlier revision (applied as a new revision)."""
    c = Client(context)
    data = c.call("POST", f"/v1/deployments/{name}/rollback", json={"revision": to})
    emit(data, output, _deployments_table([data]))


def history(name: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """A deployment's revisions."""
    data = Client(context).call("GET", f"/v1/deployments/{name}/history")
    emit(data, output, _table(None, ["revision", "status", "module", "created", "reason"],
                              [[h["revision"], h["status"], h["module_digest"][:19], _ts(h["created"]), h["reason"]]
                               for h in data]))


def rm(kind: str = typer.Argument(..., help="deployment, route, rule or module"), name: str = typer.Argument(...),
       context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Delete a deployment, route, rule or (unused) module."""
    k = _kind(kind)
    if k not in ("deployments", "routes", "rules", "modules"):
        fail(f"cannot delete {kind}")
    data = Client(context).call("DELETE", f"/v1/{k}/{name}")
    emit(data, output, _table(None, ["deleted"], [[name]]))


# --- modules --------------------------------------------------------------------------------

modules_app = typer.Typer(no_args_is_help=True, help="Modules in the node's store.")


@modules_app.command("push")
def modules_push(path: Path = typer.Argument(..., help=".wasm file"),
                 name: Optional[str] = typer.Option(None), version: Optional[str] = typer.Option(None),
                 sig: Optional[Path] = typer.Option(None, help="signature file (default: PATH.sig if present)"),
                 namespace: Optional[str] = typer.Option(None, help="tenant whose signing policy applies"),
                 force: bool = typer.Option(False, help="re-point an existing name:version"),
                 context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Upload a module (streamed, with a progress bar), optionally tagged and signed."""
    try:
        size = path.stat().st_size
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    sig = sig or (path.with_name(path.name + ".sig") if path.with_name(path.name + ".sig").exists() else None)
    params: dict[str, Any] = {"force": str(force).lower()}
    if name:
        params["name"] = name if version else name
    if version:
        params["version"] = version
    if namespace:
        params["namespace"] = namespace
    if sig:
        params["signature"] = base64.urlsafe_b64encode(sig.read_bytes()).decode().rstrip("=")
    c = Client(context)
    show = output != "json" and err.is_terminal
    progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=err, disable=not show)

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f, progress:
            task = progress.add_task(f"push {path.name}", total=size)
            while block := f.read(64 * 1024):
                progress.update(task, advance=len(block))
                yield block

    data = c.call("POST", "/v1/modules", params=params, content=chunks(),
                  headers={"Content-Type": "application/wasm", "Content-Length": str(size)})
    emit(data, output, _table(None, ["digest", "tags", "signed by"],
                              [[data["digest"], ", ".join(data["tags"]) or "-", ", ".join(data["signed_by"]) or "-"]]))


@modules_app.command("ls")
def modules_ls(context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """List modules."""
    get("modules", None, context, output)


@modules_app.command("rm")
def modules_rm(ref: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Delete a module no deployment uses."""
    rm("modules", ref, context, output)


# --- security administration --------------------------------------------------------------

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


# --- contexts -------------------------------------------------------------------------------

context_app = typer.Typer(no_args_is_help=True, help="Nodes and tokens this CLI talks to (config file).")


@context_app.command("set")
def context_set(name: str, url: str = typer.Option(..., help="the node's API, e.g. http://127.0.0.1:8282"),
                token_file: Optional[Path] = typer.Option(None, help="read the token from this file; '-' reads "
                                                                     "it from standard input"),
                token: Optional[str] = typer.Option(None, hidden=True),
                ca: Optional[Path] = typer.Option(None, help="CA bundle for a TLS API"),
                use: bool = typer.Option(True, help="make it the current context")) -> None:
    """Add or change a context. The token is read from a file or standard input, never from
    the command line (where the process list and the shell's history would keep it)."""
    if token is not None:
        fail("--token would put the token in the process list and the shell history: give --token-file FILE, "
             "or --token-file - and the token on standard input")
    if token_file is not None:
        try:
            token = (sys.stdin.readline() if str(token_file) == "-" else token_file.read_text()).strip()
        except OSError as e:
            fail(f"{token_file}: {e.strerror}")
        if not token:
            fail(f"{'standard input' if str(token_file) == '-' else token_file}: no token there")
    cfg = load_config()
    entry = {"url": url, "token": token}
    if ca:
        entry["ca"] = str(ca)
    cfg["contexts"][name] = entry
    if use:
        cfg["current-context"] = name
    save_config(cfg)
    out.print(f"context {name} → {url}" + (" (current)" if use else ""), highlight=False)


@context_app.command("use")
def context_use(name: str) -> None:
    """Switch the current context."""
    cfg = load_config()
    if name not in cfg["contexts"]:
        fail(f"no context {name!r} in {config_path()}")
    cfg["current-context"] = name
    save_config(cfg)
    out.print(f"current context: {name}", highlight=False)


@context_app.command("ls")
def context_ls(output: str = OUTPUT) -> None:
    """List contexts (tokens hidden)."""
    cfg = load_config()
    rows = [[("* " if n == cfg.get("current-context") else "  ") + n, c.get("url"), "yes" if c.get("token") else "no"]
            for n, c in cfg["contexts"].items()]
    emit({n: {"url": c.get("url")} for n, c in cfg["contexts"].items()}, output,
         _table(None, ["context", "url", "token"], rows))


# --- signing --------------------------------------------------------------------------------

def keygen(out_prefix: Path = typer.Option(Path("iotwasm"), "--out", help="writes OUT.key (0600) and OUT.pub")) -> None:
    """Generate an Ed25519 key pair for signing modules."""
    from ..registry.signing import generate_key, key_id, load_public

    private, public = generate_key()
    key_path, pub_path = out_prefix.with_name(out_prefix.name + ".key"), out_prefix.with_name(out_prefix.name + ".pub")
    if key_path.exists():
        fail(f"{key_path} exists; refusing to overwrite a private key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    out.print(f"key {key_id(load_public(public))}: private {key_path}, public {pub_path}", highlight=False)


def sign(module: Path = typer.Argument(..., help=".wasm file"),
         key: Path = typer.Option(..., help="private key PEM (from iotwasm keygen)"),
         output_file: Optional[Path] = typer.Option(None, "--out", help="default: MODULE.sig")) -> None:
    """Sign a module's digest; writes MODULE.sig, which `modules push` sends along."""
    from ..engine.module import digest_of
    from ..registry.signing import SignatureError, load_private, sign_digest

    try:
        sig = sign_digest(load_private(key.read_bytes(), str(key)), digest_of(module.read_bytes()))
    except (OSError, SignatureError) as e:
        fail(str(e))
    dest = output_file or module.with_name(module.name + ".sig")
    dest.write_text(sig.to_json() + "\n")
    out.print(f"signed {sig.digest} with key {sig.key_id} → {dest}", highlight=False)


# --- rules ----------------------------------------------------------------------------------

rules_app = typer.Typer(no_args_is_help=True, help="Enable or disable streaming rules (list them with "
                                                   "`get rules`).")


def _switch_rules(enabled: bool, name: str | None, tag: str | None, context: str | None, output: str) -> None:
    if (name is None) == (tag is None):
        fail("give a rule NAME or --tag TAG (not both)")
    verb = "enable" if enabled else "disable"
    c = Client(context)
    if name is not None:
        data = c.call("POST", f"/v1/rules/{name}/{verb}")
        emit(data, output, _rules_table([data]))
        return
    data = c.call("POST", f"/v1/rules/{verb}", json={"tag": tag})
    emit(data, output, _table(None, [f"{verb}d (tag {tag})"], [[n] for n in data["changed"]] or [["none"]]))


@rules_app.command("enable")
def rules_enable(name: Optional[str] = typer.Argument(None, help="rule"),
                 tag: Optional[str] = typer.Option(None, "--tag", help="every rule with this tag"),
                 context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Enable a rule, or every rule with a tag."""
    _switch_rules(True, name, tag, context, output)


@rules_app.command("disable")
def rules_disable(name: Optional[str] = typer.Argument(None, help="rule"),
                  tag: Optional[str] = typer.Option(None, "--tag", help="every rule with this tag"),
                  context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Disable a rule, or every rule with a tag (they stop evaluating; window state is kept)."""
    _switch_rules(False, name, tag, context, output)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `iotwasm` command."""
    for fn in (apply, get, ps, describe, logs, scale, suspend, resume, rollback, history, rm, keygen, sign):
        app.command()(fn)
    app.add_typer(modules_app, name="modules")
    from .audit import audit_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(token_app, name="token")
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(context_app, name="context")
    app.add_typer(rules_app, name="rules")
    from .devices import devices_app

    app.add_typer(devices_app, name="devices")
    from .data import data_app

    app.add_typer(data_app, name="data")
