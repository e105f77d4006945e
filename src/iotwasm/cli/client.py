"""The CLI as a client of a node's management API (kubectl/docker habits).

Which node and which token: ``--context NAME`` or the config file's current context, or
``IOTWASM_URL`` / ``IOTWASM_TOKEN`` (which win over the file). The config file is
``$IOTWASM_CONFIG`` or ``~/.config/iotwasm/config.yaml``::

    current-context: edge1
    contexts:
      edge1: {url: "http://127.0.0.1:8282", token: "iot_…", ca: null}

Every command prints tables (rich) or, with ``--output json``, the API's JSON for scripts.
Errors print the API's problem ``detail`` on one line and exit 1.

This module holds what every client command shares: the config file, the connection to a node
(`Client`), errors and output. The commands live with the objects they act on: `objects`
(apply, get, describe, rm on any kind), `deployments`, `modules` (and their signatures),
`security` (tokens, tenants), `contexts`, `rules`, `audit`, `devices` and `data`; `register`
adds them to the `iotwasm` command.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NoReturn

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

CONTEXT = typer.Option(None, "--context", help="context of the config file (default: current)")
OUTPUT = typer.Option("table", "--output", "-o", help="table or json")


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


def without_nulls(v: Any) -> Any:
    """`v` without null entries at any depth (a describe shows what is set, not every unset
    optional field)."""
    if isinstance(v, dict):
        return {k: without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [without_nulls(x) for x in v]
    return v


def make_table(title: str | None, cols: list[str], rows: list[list[Any]]) -> Table:
    """The table every `iotwasm` listing prints, so that all of them look alike."""
    t = Table(title=title, header_style="bold", title_justify="left")
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*["-" if v is None else str(v) for v in r])
    return t


def fmt_mib(n: int | None) -> str:
    """Bytes as the listings show them ("-" for unknown)."""
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


def fmt_time(t: float | None) -> str:
    """A Unix time as the listings show it, in local time ("-" for never)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def register(app: typer.Typer) -> None:
    """Add the client commands to the `iotwasm` command."""
    # imported here, not when this module loads: the command modules import this one
    from .contexts import context_app
    from .deployments import history, logs, ps, resume, rollback, scale, suspend
    from .modules import keygen, modules_app, sign
    from .objects import apply, describe, get, rm
    from .rules import rules_app
    from .security import tenant_app, token_app

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
