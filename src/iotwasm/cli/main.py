"""`iotwasm` command line: inspect modules, run messages through them, run the demo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, NoReturn

import typer
from rich import markup
from rich.console import Console
from rich.table import Table

from ..container import RestartPolicy, WasmContainer
from ..engine import Capabilities, Limits, Preopen, Runtime
from ..engine.capabilities import HOST_CAPABILITIES, WASI
from ..engine.http_client import HttpGrant
from ..engine.runtime import DEFAULT_MAX_TIMEOUT_MS
from ..errors import IotwasmError
from ..message import Message

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Run IoT and edge logic as sandboxed WebAssembly containers.")
out = Console()
err = Console(stderr=True)

EXIT_FAILED = 1
EXIT_DEAD_LETTERS = 3


def _fail(e: Exception) -> NoReturn:
    # never wrapped: one error is one line, also in a journal or a pipe
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result = {}
    for item in items:
        if "=" not in item:
            _fail(ValueError(f"{what} {item!r} must look like KEY=VALUE"))
        k, v = item.split("=", 1)
        result[k] = v
    return result


def _dirs(items: list[str]) -> tuple[Preopen, ...]:
    dirs = []
    for item in items:
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            _fail(ValueError(f"--dir {item!r} must look like HOST:GUEST[:ro|rw]"))
        dirs.append(Preopen(parts[0], parts[1], len(parts) == 3 and parts[2] == "rw"))
    return tuple(dirs)


@app.command()
def inspect(module: Path = typer.Argument(..., help="a .wasm or .wat file"),
            output: str = typer.Option("table", "--output", "-o", help="table or json")) -> None:
    """Show a module's ABI, digest, imports, exports and memory."""
    with Runtime() as rt:
        try:
            info = rt.load(module).info
        except IotwasmError as e:
            _fail(e)
    if output == "json":
        print(json.dumps(info.to_dict(), indent=2))
        return
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold cyan")
    t.add_column()
    mem = ("none" if info.memory_min_pages is None else
           f"{info.memory_min_pages} pages min, "
           f"{'no max' if info.memory_max_pages is None else f'{info.memory_max_pages} max'}")
    t.add_row("module", info.name)
    t.add_row("abi", info.abi)
    t.add_row("digest", info.digest)
    t.add_row("size", f"{info.size:,} bytes")
    t.add_row("memory", mem)
    t.add_row("imports", "\n".join(f"{i.module}.{i.name}  {i.type}" for i in info.imports) or "none")
    t.add_row("exports", "\n".join(f"{e.name}  {e.type}" for e in info.exports) or "none")
    if info.problems:
        t.add_row("[red]problems", "\n".join(info.problems))
    out.print(t)


@app.command()
def run(
    module: Path = typer.Argument(..., help="a .wasm or .wat file"),
    input: Optional[Path] = typer.Option(None, "--input", "-i",
                                         help="file of messages, one per line (default: stdin)"),
    topic: str = typer.Option("input", help="topic given to every input message"),
    envelope: bool = typer.Option(False, help='lines are {"topic": .., "payload": ..} objects, '
                                              "and outputs are printed the same way"),
    hex_payload: bool = typer.Option(False, "--hex", help="input lines are hex-encoded binary payloads"),
    batch: int = typer.Option(100, min=1, help="messages per call into the module"),
    memory: str = typer.Option("64Mi", help="linear memory limit, e.g. 16Mi"),
    fuel: Optional[str] = typer.Option(None, help="fuel per call, e.g. 10M (default: unmetered)"),
    timeout: str = typer.Option("1s", help="wall-clock limit per call, e.g. 50ms"),
    stack: str = typer.Option("512Ki", help="wasm stack size"),
    allow: list[str] = typer.Option([], help=f"grant a capability: {', '.join([*HOST_CAPABILITIES, WASI])}"),
    config: list[str] = typer.Option([], help="config entry KEY=VALUE for iot.config_get"),
    env: list[str] = typer.Option([], help="environment variable KEY=VALUE for WASI programs"),
    arg: list[str] = typer.Option([], help="argument for WASI programs"),
    dir: list[str] = typer.Option([], help="preopened directory HOST:GUEST[:ro|rw] for WASI programs"),
    http_allow: list[str] = typer.Option([], "--http-allow", help="URL pattern iot.http_request may reach "
                                         "(grants capability http), e.g. 'https://api.example.com/v1/*'"),
    http_private: bool = typer.Option(False, "--http-private-networks",
                                      help="let allowed names resolve to private/loopback addresses"),
) -> None:
    """Run messages (one per line) through a module; outputs go to stdout, errors to stderr.

    Exit code 0 when every message was handled, 3 when some were dead-lettered, 1 when the
    module could not run at all.
    """
    try:
        limits = Limits.parse(memory=memory, fuel=fuel, timeout=timeout, stack=stack)
        cfg = _pairs(config, "--config")
        grants = set(allow) | {"config"}  # config holds only what was given on this command line
        if http_allow:
            grants.add("http")
        caps = Capabilities(host=frozenset(grants), config=cfg, env=_pairs(env, "--env"),
                            args=tuple(arg), dirs=_dirs(dir),
                            http=HttpGrant(allow=tuple(http_allow), private_networks=http_private))
    except IotwasmError as e:
        _fail(e)
    from ..node.logs import printable  # a module's log lines reach this terminal: never raw

    source = input.open("rb") if input else sys.stdin.buffer
    dead = 0
    # the limit given on this command line is the one that counts, however long
    rt = Runtime(max_timeout_ms=max(DEFAULT_MAX_TIMEOUT_MS, limits.timeout_ms or 0))
    try:
        container = WasmContainer(module.stem, module, runtime=rt, limits=limits, capabilities=caps,
                                  restart=RestartPolicy(mode="never"),
                                  on_log=lambda name, lvl, text: err.print(
                                      f"[dim]{markup.escape(name)}: {markup.escape(printable(text))}[/]",
                                      highlight=False))
        container.start()
    except IotwasmError as e:
        _fail(e)
    except OSError as e:
        _fail(IotwasmError(f"cannot read module: {e}"))
    write = sys.stdout.buffer.write
    pending: list[Message] = []
    lines: list[int] = []  # input line of each pending message, to name it in errors

    def flush() -> int:
        if not pending:
            return 0
        try:
            result = container.process(pending)
        except IotwasmError as e:
            _fail(e)
        for o in result.outputs:
            if envelope:
                line = json.dumps({"topic": o.topic or pending[o.index].topic,
                                   "payload": o.payload.decode("utf-8", "replace")}).encode()
            else:
                line = o.payload
            write(line + b"\n")
        for d in result.dead_letters:
            err.print(f"[yellow]dead letter[/] line {lines[d.index]}: {d.error}", highlight=False)
        sys.stdout.flush()
        pending.clear()
        lines.clear()
        return len(result.dead_letters)

    for lineno, raw in enumerate(source, 1):
        raw = raw.rstrip(b"\r\n")
        if not raw:
            continue
        try:
            msg = _parse_line(raw, topic, envelope, hex_payload)
        except ValueError as e:
            err.print(f"[red]bad input[/] line {lineno}: {e}", highlight=False)
            dead += 1
            continue
        pending.append(msg)
        lines.append(lineno)
        if len(pending) >= batch:
            dead += flush()
    dead += flush()
    container.stop()
    rt.close()
    if dead:
        raise typer.Exit(EXIT_DEAD_LETTERS)


def _parse_line(raw: bytes, topic: str, envelope: bool, hex_payload: bool) -> Message:
    if envelope:
        try:
            obj = json.loads(raw)
            t, p = obj["topic"], obj["payload"]
        except (ValueError, KeyError, TypeError):
            raise ValueError('expected {"topic": ..., "payload": ...}') from None
        payload = p.encode() if isinstance(p, str) else json.dumps(p).encode()
        return Message(str(t), bytes.fromhex(payload.decode()) if hex_payload else payload)
    if hex_payload:
        try:
            return Message(topic, bytes.fromhex(raw.decode()))
        except ValueError:
            raise ValueError("not hex") from None
    return Message(topic, raw)


@app.command()
def demo(
    seconds: float = typer.Option(10.0, help="how long to run (0 = until Ctrl-C)"),
    devices: int = typer.Option(20, help="simulated devices"),
    rate: float = typer.Option(50.0, help="readings per second per device"),
    modules: Optional[Path] = typer.Option(None, help="directory with the example modules"),
) -> None:
    """A simulated greenhouse: sensor frames → decode → convert → filter → average → sign."""
    from .demo import run_demo

    try:
        run_demo(seconds=seconds, devices=devices, rate=rate, modules_dir=modules, console=out)
    except IotwasmError as e:
        _fail(e)


@app.command()
def up(
    path: Optional[Path] = typer.Argument(None, help="manifest file or directory "
                                                     "(default: the greenhouse demo)"),
    broker: Optional[str] = typer.Option(None, help="the node's bus: mqtt://host:port or nats://… "
                                                    "(default: in-process)"),
    data: Path = typer.Option(Path(".iotwasm"), help="data directory (SQLite state, stores, caches)"),
    name: Optional[str] = typer.Option(None, help="node name (default: host name)"),
    http: str = typer.Option("127.0.0.1:8181", help="HOST:PORT of the ingest server for http sources"),
    seconds: float = typer.Option(0.0, help="stop after this many seconds (0 = until Ctrl-C)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the node does"),
    api: str = typer.Option("127.0.0.1:8282", "--api", help="HOST:PORT of the management API"),
    no_api: bool = typer.Option(False, "--no-api", help="do not serve the management API"),
    tls_cert: Optional[Path] = typer.Option(None, help="TLS certificate (PEM) for the API"),
    tls_key: Optional[Path] = typer.Option(None, help="TLS private key (PEM) for the API"),
    api_insecure: bool = typer.Option(False, "--api-insecure",
                                      help="allow the API beyond localhost without TLS"),
    otlp: Optional[str] = typer.Option(None, "--otlp", help="export traces and metrics over OTLP/HTTP to this "
                                       "collector (http://host:4318); the OTEL_EXPORTER_OTLP_* variables "
                                       "configure it too"),
    otel: bool = typer.Option(False, "--otel", help="OpenTelemetry span per batch (printed to stderr "
                                                    "unless a tracer provider is configured)"),
    fleet: Optional[str] = typer.Option(None, "--fleet", help="join the fleet on this NATS server "
                                                              "(nats://host:port, JetStream on)"),
    label: list[str] = typer.Option([], "--label", help="fleet label KEY=VALUE (site, arch, gpio=true, …)"),
    taint: list[str] = typer.Option([], "--taint", help="fleet taint KEY=VALUE:EFFECT or KEY:EFFECT "
                                                        "(NoSchedule, NoExecute): only deployments that "
                                                        "tolerate it are placed here"),
    controller: bool = typer.Option(False, "--controller", help="also be a candidate fleet controller "
                                                                "(leader election: one leads at a time)"),
    capacity_memory: str = typer.Option("1Gi", help="memory offered to fleet deployments"),
    capacity_instances: int = typer.Option(64, help="module instances offered to fleet deployments"),
    trust_key: list[Path] = typer.Option([], "--trust-key", help="public key PEM (from iotwasm keygen) whose "
                                         "signature a fleet module needs before this node loads it; "
                                         "repeatable (any one of the keys suffices)"),
    max_timeout: str = typer.Option("10s", "--max-timeout",
                                    help="the longest one call into a module may run; a deployment "
                                         "asking for more (resources.timeout) is refused"),
    device_silence: str = typer.Option("10m", "--device-silence",
                                       help="a device that sends nothing for this long is flagged silent"),
    max_instances: Optional[int] = typer.Option(None, "--max-instances", min=1,
                                                help="module instances all deployments may hold together; "
                                                     "beyond it, the least recently used idle one is evicted"),
    max_memory: Optional[str] = typer.Option(None, "--max-memory",
                                             help="linear memory all instances may hold together, e.g. 2Gi"),
    workers: int = typer.Option(1, "--workers", min=1,
                                help="spread the routes over this many worker processes (one per core), "
                                     "each device's messages in one of them (docs/node.md, Several cores)"),
) -> None:
    """Run a node: reconcile the manifests into running deployments and routes."""
    import asyncio

    from ..node import NodeConfig
    from .up import configure_logging, default_manifests, run_node

    path = path or (None if fleet else default_manifests())
    if (path is None and not fleet) or (path is not None and not path.exists()):
        _fail(IotwasmError(f"manifests not found: {path or 'examples/greenhouse'}"))
    configure_logging(verbose, err)
    # whatever the node or a library creates is the node user's alone (the data directory
    # holds tokens' hashes, kv data, dead-letter payloads and secret config values)
    os.umask(0o077)
    from ..engine.limits import parse_timeout_ms

    try:
        max_timeout_ms = parse_timeout_ms(max_timeout)
    except IotwasmError as e:
        _fail(IotwasmError(f"--max-timeout: {e}"))
    try:
        silence_s = parse_timeout_ms(device_silence) / 1000
    except IotwasmError as e:
        _fail(IotwasmError(f"--device-silence: {e}"))
    if max_memory is not None:
        from ..engine.limits import parse_size
        try:
            parse_size(max_memory)
        except IotwasmError as e:
            _fail(IotwasmError(f"--max-memory: {e}"))
    from .workers import check_stranded, up_workers

    try:
        check_stranded(data, workers)
        if workers > 1:
            up_workers(workers, path, broker, data, name, out, seconds, fleet=fleet, no_api=no_api,
                       extra=["--max-timeout", max_timeout, "--device-silence", device_silence,
                              *(["--max-instances", str(max_instances)] if max_instances else []),
                              *(["--max-memory", max_memory] if max_memory else []), *(["-v"] if verbose else [])])
            return
    except IotwasmError as e:
        _fail(e)
    cfg = NodeConfig(data_dir=data, manifests=path, broker=broker, http=http, max_timeout_ms=max_timeout_ms,
                     device_silence_s=silence_s, max_instances=max_instances, max_memory=max_memory)
    if name:
        cfg.name = name
    settings = None
    if not no_api:
        from ..api.server import ApiSettings

        settings = ApiSettings(api, tls_cert, tls_key, api_insecure)
        try:
            settings.check()
        except IotwasmError as e:
            _fail(e)
    fleet_opts = None
    if trust_key and not fleet:
        _fail(IotwasmError("--trust-key sets the signature policy for fleet modules; give --fleet too"))
    if (taint or controller) and not fleet:
        _fail(IotwasmError(f"{'--taint' if taint else '--controller'} needs --fleet"))
    if fleet:
        from ..engine.limits import parse_size
        from ..fleet.model import Taint

        try:
            fleet_opts = {"url": fleet, "labels": _pairs(label, "--label"),
                          "taints": [str(Taint.parse(t, "--taint")) for t in taint],
                          "memory": parse_size(capacity_memory), "instances": capacity_instances,
                          "trusted": _trusted_keys(trust_key) if trust_key else None}
        except IotwasmError as e:
            _fail(e)
    try:
        asyncio.run(run_node(cfg, out, seconds, api=settings, otel=otel, otlp=otlp, fleet=fleet_opts,
                             controller=controller, own_process=True))
    except IotwasmError as e:
        _fail(e)


def _trusted_keys(paths: list[Path]) -> dict:
    """Key id → public key for `--trust-key` files; a file that is not an Ed25519 public key
    PEM stops the node before it starts."""
    from ..registry.signing import key_id, load_public

    keys = {}
    for p in paths:
        try:
            pem = p.read_bytes()
        except OSError as e:
            raise IotwasmError(f"--trust-key {p}: cannot read: {e.strerror or e}") from None
        key = load_public(pem, f"--trust-key {p}")
        keys[key_id(key)] = key
    return keys


@app.command()
def schema() -> None:
    """Print the JSON Schema of manifests (Deployment, Route)."""
    from ..node.manifests import json_schema

    print(json.dumps(json_schema(), indent=2))


# the commands that drive a running node through its management API
from .client import register as _register_client  # noqa: E402

_register_client(app)

from .fleet import register as _register_fleet  # noqa: E402

_register_fleet(app)

from .dev import register as _register_dev  # noqa: E402

_register_dev(app)

from .invoke import register as _register_invoke  # noqa: E402

_register_invoke(app)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
