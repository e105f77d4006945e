"""The developer loop: `iotwasm new`, `build`, `test` and `dev`.

`new` scaffolds a project (source, manifest, samples, README) from a template; `build` runs the
language's toolchain into NAME.wasm and NAME.wasm.sha256; `test` runs samples.yaml through the
module in the engine and diffs what differs; `dev` rebuilds on every save and, when the
samples pass, pushes the module to a running node and re-applies the manifest bound to the new
digest, which the node rolls out as a hot update.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from ..errors import IotwasmError
from ..toolchain import (
    TEMPLATES,
    BuildFailed,
    BuildResult,
    Project,
    build,
    listing,
    new_project,
    open_project,
    run_samples,
)
from ..toolchain.samples import Report

out = Console()
err = Console(stderr=True)


def _fail(e: Exception | str) -> NoReturn:
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _open(path: Path) -> Project:
    try:
        return open_project(path)
    except IotwasmError as e:
        _fail(e)
        raise  # unreachable: _fail exits


def _build(project: Project, out_file: Path | None = None, quiet: bool = False) -> BuildResult:
    try:
        r = build(project, out_file)
    except BuildFailed as e:
        if e.output:
            err.print(e.output, highlight=False, markup=False, soft_wrap=True)
        _fail(e)
        raise
    except IotwasmError as e:
        _fail(e)
        raise
    if r.output and not quiet:
        err.print(r.output, highlight=False, markup=False, soft_wrap=True)
    if not quiet:
        out.print(f"built {_rel(r.module)} ({r.size:,} bytes, {r.digest}) with {project.language.title} "
                  f"in {r.seconds:.1f} s", highlight=False, soft_wrap=True)
    return r


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def new(name: Optional[str] = typer.Argument(None, help="project name: lowercase letters, digits, '-'"),
        lang: str = typer.Option("c", "--lang", "-l", help="c, rust, assemblyscript, python or js"),
        template: str = typer.Option("filter", "--template", "-t", help=", ".join(TEMPLATES)),
        directory: Path = typer.Option(Path("."), "--dir", help="where to create the project directory"),
        list_: bool = typer.Option(False, "--list", help="show the languages and templates")) -> None:
    """Create a module project: source, manifest (Deployment + Route), samples, README."""
    if list_:
        t = Table(box=None, pad_edge=False)
        for col in ("language", "status", "toolchain", "templates"):
            t.add_column(col)
        for lang_name, status, toolchain, templates in listing():
            t.add_row(lang_name, status, toolchain, ", ".join(templates) or "-")
        out.print(t)
        out.print("\n".join(f"  {k:<10} {v}" for k, v in TEMPLATES.items()), highlight=False, markup=False)
        return
    if not name:
        _fail("give a project name (or --list)")
        return
    try:
        path = new_project(name, lang, template, directory)
    except IotwasmError as e:
        _fail(e)
        return
    out.print(f"created {_rel(path)}: a {template} module in {lang}; next: cd {_rel(path)} && iotwasm build "
              "&& iotwasm test", highlight=False, soft_wrap=True)


def build_cmd(path: Path = typer.Argument(Path("."), help="project directory or a single source file"),
              out_file: Optional[Path] = typer.Option(None, "--out", help="module file (default: NAME.wasm "
                                                      "in the project)")) -> None:
    """Build the project's module with its language's toolchain (writes NAME.wasm and its digest)."""
    _build(_open(path), out_file)


def _stale(project: Project) -> bool:
    if not project.module.is_file():
        return True
    built = project.module.stat().st_mtime_ns
    return any(p.stat().st_mtime_ns > built for p in project.language.sources(project.path))


def print_report(report: Report) -> None:
    for r in report.results:
        if r.ok:
            out.print(f"[green]PASS[/] {r.sample.name}", highlight=False)
        else:
            out.print(f"[bold red]FAIL[/] {r.sample.name}", highlight=False)
            for line in r.diff:
                style = "red" if line.startswith("-") else "green" if line.startswith("+") else "dim"
                out.print(f"  [{style}]{line}[/]", highlight=False, markup=True, soft_wrap=True)
    for line in report.logs:
        out.print(f"[dim]log: {line}[/]", highlight=False, soft_wrap=True)
    failed = len(report.failed)
    out.print(f"{len(report.results) - failed} passed, {failed} failed", highlight=False)


def test_cmd(path: Path = typer.Argument(Path("."), help="project directory"),
             no_build: bool = typer.Option(False, "--no-build", help="use NAME.wasm as it is")) -> None:
    """Run samples.yaml through the module in the engine (the manifest's limits, capabilities and
    config) and compare outputs and dead letters; exit 1 with a diff when something differs."""
    project = _open(path)
    if not no_build and _stale(project):
        _build(project)
    try:
        report = run_samples(project)
    except IotwasmError as e:
        _fail(e)
        return
    print_report(report)
    if report.failed:
        raise typer.Exit(1)


def bound_manifest(project: Project, digest: str) -> str:
    """manifest.yaml with the project's Deployment bound to `digest` (what `dev` applies)."""
    docs = list(yaml.safe_load_all(project.manifest.read_text()))
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "Deployment" and \
                (d.get("metadata") or {}).get("name") == project.name:
            d.setdefault("spec", {})["module"] = digest
    return yaml.safe_dump_all([d for d in docs if d is not None], sort_keys=False)


def deploy(project: Project, result: BuildResult, context: str | None) -> bool:
    """Push the built module to the node and apply the manifest bound to its digest; False when
    the node reported problems with it."""
    from .client import Client

    c = Client(context)
    version = "dev-" + result.digest.removeprefix("sha256:")[:12]
    c.call("POST", "/v1/modules", params={"name": project.name, "version": version},
           content=result.module.read_bytes(), headers={"Content-Type": "application/wasm"})
    res = c.call("POST", "/v1/apply", content=bound_manifest(project, result.digest).encode(),
                 headers={"Content-Type": "application/yaml"})
    actions = ", ".join(f"{a['kind'].lower()} {a['name']} {a['action']}" for a in res["applied"])
    out.print(f"deployed {project.name}:{version}: {actions}", highlight=False, soft_wrap=True)
    for p in res["problems"]:
        err.print(f"[red]problem:[/] {p}", highlight=False, soft_wrap=True)
    return not res["problems"]


def _snapshot(project: Project) -> dict[Path, tuple[int, int]]:
    snap = {}
    for p in project.sources():
        try:
            st = p.stat()
        except OSError:
            continue
        snap[p] = (st.st_mtime_ns, st.st_size)
    return snap


def dev(path: Path = typer.Argument(Path("."), help="project directory"),
        context: Optional[str] = typer.Option(None, "--context", help="the node (default: current context)"),
        once: bool = typer.Option(False, "--once", help="build, test and deploy once, then exit"),
        interval: float = typer.Option(0.3, help="seconds between checks for saved files")) -> None:
    """Rebuild on every save and hot-update a running node: build, run the samples, and when they
    pass push the module and re-apply the manifest bound to its digest."""
    project = _open(path)
    last: dict = {}
    while True:
        snap = _snapshot(project)
        if snap != last:
            last = snap
            try:
                result = build(project)
                out.print(f"built {result.module.name} ({result.digest[:19]}…) in {result.seconds:.1f} s",
                          highlight=False)
                report = run_samples(project)
            except BuildFailed as e:
                err.print(e.output or "", highlight=False, markup=False, soft_wrap=True)
                err.print(f"[red]build failed:[/] {e}; waiting for the next save", highlight=False, soft_wrap=True)
                report = None
            except IotwasmError as e:
                err.print(f"[red]error:[/] {e}; waiting for the next save", highlight=False, soft_wrap=True)
                report = None
            deployed = False
            if report is not None:
                if report.failed:
                    print_report(report)
                    err.print("[yellow]samples fail: the node keeps the running version[/]", highlight=False)
                else:
                    deployed = deploy(project, result, context)
            if once:
                if not deployed:
                    raise typer.Exit(1)
                return
        time.sleep(interval)


def register(app: typer.Typer) -> None:
    """Add the developer commands to the `iotwasm` command."""
    app.command()(new)
    app.command("build")(build_cmd)
    app.command("test")(test_cmd)
    app.command()(dev)
