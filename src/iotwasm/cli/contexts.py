"""`iotwasm context set|use|ls`: the nodes and tokens this CLI talks to, kept in its config
file. They edit the file alone and call no node.

Split from `client`, which reads the file (`load_config`, `target`) for every other command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .client import OUTPUT, make_table, config_path, emit, fail, load_config, out, save_config


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
         make_table(None, ["context", "url", "token"], rows))
