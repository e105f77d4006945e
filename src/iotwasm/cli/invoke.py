"""`iotwasm invoke NAME`: run messages through a deployment of the node the CLI talks to and
print what came out (the API's ``POST /v1/deployments/{name}/invoke``).

Binary-safe both ways: the payload is read as bytes (``--data``, ``--input FILE`` or stdin) and
sent as text when it is UTF-8, as base64 when it is not; outputs are written to stdout as the
bytes the module emitted, one per line (``--output json`` prints the API's answer instead, where
bytes that are not text come as ``payload_b64``). Dead letters go to stderr, one line each, and
the command exits 3 when there were any — as `iotwasm run` and `iotwasm fleet invoke` do.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import BinaryIO

import typer

from .client import CONTEXT, Client, err, fail

EXIT_DEAD_LETTERS = 3
#: the most the command reads as input (the API takes 2 MiB of JSON; base64 adds a third)
MAX_INPUT = 1024 * 1024
#: at most this many messages per call (the API's cap)
MAX_MESSAGES = 1000


def _read_capped(src: BinaryIO, where: str) -> bytes:
    data = src.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        fail(f"{where}: more than {MAX_INPUT:,} bytes; split it into several invocations")
    return data


def _message(payload: bytes, topic: str | None) -> dict:
    try:
        body = {"payload": payload.decode()}
    except UnicodeDecodeError:
        body = {"payload_b64": base64.b64encode(payload).decode()}
    return {**body, **({"topic": topic} if topic else {})}


def invoke(name: str = typer.Argument(..., help="deployment"),
           data: str | None = typer.Option(None, "--data", "-d", help="the message payload (default: stdin)"),
           input: Path | None = typer.Option(None, "--input", "-i", help="read the payload from this file"),
           topic: str | None = typer.Option(None, "--topic", help="the messages' topic (default: invoke/NAME)"),
           lines: bool = typer.Option(False, "--lines", help="each input line is one message"),
           context: str | None = CONTEXT,
           output: str = typer.Option("raw", "--output", "-o", help="raw (output payloads, one per line) or json")
           ) -> None:
    """Run a message (or, with --lines, one per input line) through a deployment on the node and
    print its outputs; dead letters on stderr, exit 3 when there were any."""
    if data is not None and input is not None:
        fail("give --data or --input, not both")
    if data is not None:
        raw = data.encode()
        if len(raw) > MAX_INPUT:
            fail(f"--data: more than {MAX_INPUT:,} bytes")
    elif input is not None:
        try:
            with input.open("rb") as f:
                raw = _read_capped(f, str(input))
        except OSError as e:
            fail(f"{input}: cannot read: {e.strerror}")
    else:
        raw = _read_capped(sys.stdin.buffer, "stdin")
    payloads = [ln.rstrip(b"\r") for ln in raw.split(b"\n") if ln.strip()] if lines else [raw]
    if not payloads:
        fail("no message to send (the input has no line)")
    if len(payloads) > MAX_MESSAGES:
        fail(f"{len(payloads)} messages; at most {MAX_MESSAGES} per invocation")
    res = Client(context).call("POST", f"/v1/deployments/{name}/invoke",
                               json={"messages": [_message(p, topic) for p in payloads]})
    if output == "json":
        print(json.dumps(res, indent=2))
    else:
        write = sys.stdout.buffer.write
        for o in res["outputs"]:
            write((base64.b64decode(o["payload_b64"]) if "payload_b64" in o else o["payload"].encode()) + b"\n")
        sys.stdout.flush()
    for d in res["dead_letters"]:
        where = f"message {d['index'] + 1}" if len(payloads) > 1 else "message"
        err.print(f"dead letter ({d['kind']}) {where}: {d['error']}", highlight=False, markup=False,
                  soft_wrap=True)
    if res["dead_letters"]:
        raise typer.Exit(EXIT_DEAD_LETTERS)


def register(app: typer.Typer) -> None:
    app.command()(invoke)
