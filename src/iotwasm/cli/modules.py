"""`iotwasm modules push|ls|rm`, `keygen` and `sign`: modules in a node's store and the Ed25519
signatures a tenant's signing policy asks of them. `keygen` and `sign` work on local files and
call no node; `modules push` sends a module's signature along.

Split from `client` (the config file, the connection to a node and the output every command
shares).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from .client import CONTEXT, OUTPUT, Client, make_table, emit, err, fail, out
from .objects import get, rm


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
        params["name"] = name
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
    emit(data, output, make_table(None, ["digest", "tags", "signed by"],
                              [[data["digest"], ", ".join(data["tags"]) or "-", ", ".join(data["signed_by"]) or "-"]]))


@modules_app.command("ls")
def modules_ls(context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """List modules."""
    get("modules", None, context, output)


@modules_app.command("rm")
def modules_rm(ref: str, context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Delete a module no deployment uses."""
    rm("modules", ref, context, output)


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
