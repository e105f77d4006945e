"""`iotwasm up --workers N`: one node's routes spread over N worker processes.

The parent holds the broker connection (the node's persistent session and its last will)
and an `Ingress` that hands each message to the worker its order key falls to; each worker
is an `iotwasm up` of its own on the same manifests, with a data directory of its own
(`<data>/workers/<k>`: its outbox, dead letters, module cache) and a connection of its own
to publish on. The parent restarts a worker that exits; its unsettled messages wait for it.
docs/node.md ("Several cores") says what runs in workers and what does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..errors import ConfigError, IotwasmError
from ..message import Message
from ..messaging import Will, open_bus
from ..messaging.ingress import Ingress
from ..messaging.transports import INGRESS_TOKEN_ENV
from ..node.datadir import stranded_outboxes
from ..node.views import status_topic
from .heap import freeze_heap

log = logging.getLogger("iotwasm.workers")

#: a worker that exits is started again after this long (doubling up to RESTART_MAX_S while
#: it keeps exiting within RESTART_RESET_S of its start)
RESTART_MIN_S, RESTART_MAX_S, RESTART_RESET_S = 0.5, 10.0, 30.0


@dataclass
class WorkerOptions:
    """What the parent passes on to every worker's `iotwasm up`."""

    manifests: Path
    data: Path
    name: str
    broker: str
    extra: list[str] = field(default_factory=list)


def check_broker(broker: str | None) -> str:
    if not broker or urllib.parse.urlsplit(broker).scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"--workers needs an MQTT broker (--broker mqtt://host:port), not {broker or 'none'}")
    return broker


def check_stranded(data: Path, workers: int) -> None:
    """Refuse to start when an outbox this node would not use still holds messages: they
    were kept for uplinks by a run with another number of workers (or without them), and
    would never be sent (a full disk included: `stranded_outboxes`)."""
    stranded = stranded_outboxes(data, workers)
    if not stranded:
        return
    where = "; ".join(f"{p} holds {n:,}" for p, n in stranded)
    single = any(p.parent == data for p, _ in stranded)
    before = "without --workers" if single else \
        f"with --workers {max(int(p.parent.name) for p, _ in stranded) + 1}"
    raise ConfigError(f"{where} message(s) for uplinks that this node would never send "
                      f"{'without --workers' if workers == 1 else f'with --workers {workers}'}: "
                      f"start it as before ({before}) until they are delivered, then change")


class Workers:
    """Start, watch and stop the worker processes of one node."""

    def __init__(self, opts: WorkerOptions, count: int, socket_path: str, token: bytes):
        self.opts = opts
        self.count = count
        self.socket_path = socket_path
        self.token = token
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started_at = [0.0] * count
        self.delay = [RESTART_MIN_S] * count
        self.restarts = [0] * count
        self.stopping = False

    def command(self, k: int) -> list[str]:
        o = self.opts
        url = (f"ingress://{self.socket_path}?worker={k}&workers={self.count}"
               f"&publish={urllib.parse.quote(o.broker, safe='')}")
        return [sys.executable, "-m", "iotwasm.cli.main", "up", str(o.manifests), "--data",
                str(o.data / "workers" / str(k)), "--broker", url, "--name", worker_name(o.name, k),
                "--no-api", *o.extra]

    def start(self, k: int) -> None:
        env = dict(os.environ, **{INGRESS_TOKEN_ENV: self.token.hex()})
        # a session of its own: a Ctrl-C in the terminal reaches the parent, which stops the
        # workers in order instead of all at once
        self.procs[k] = subprocess.Popen(self.command(k), env=env, start_new_session=True)
        self.started_at[k] = time.monotonic()

    async def watch(self) -> None:
        """Restart workers that exit, with a growing delay while they keep exiting."""
        for k in range(self.count):
            self.start(k)
        while not self.stopping:
            await asyncio.sleep(0.2)
            for k, proc in enumerate(self.procs):
                if self.stopping or proc is None or proc.poll() is None:
                    continue
                ran = time.monotonic() - self.started_at[k]
                self.delay[k] = RESTART_MIN_S if ran > RESTART_RESET_S else min(self.delay[k] * 2, RESTART_MAX_S)
                log.warning("worker %d exited with %s after %.1fs; starting it again in %.1fs",
                            k, proc.returncode, ran, self.delay[k])
                self.procs[k] = None
                self.restarts[k] += 1
                asyncio.get_running_loop().call_later(self.delay[k], self._restart, k)

    def _restart(self, k: int) -> None:
        if not self.stopping and self.procs[k] is None:
            self.start(k)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each drains and hands back what it holds), SIGKILL what is
        left after `grace` seconds."""
        self.stopping = True
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            try:
                await asyncio.to_thread(p.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0fs; killed", p.pid, grace)
                p.kill()
                await asyncio.to_thread(p.wait)


def up_workers(count: int, path: Path | None, broker: str | None, data: Path, name: str | None,
               console: Console, seconds: float, *, fleet: str | None, no_api: bool, extra: list[str]) -> None:
    """`up --workers N`: check what the workers cannot do, then run the ingress here and
    the workers as child processes until stopped."""
    if fleet:
        raise IotwasmError("--workers and --fleet do not go together yet: a fleet member is one process")
    if not no_api:
        raise IotwasmError("--workers runs without the management API (each worker keeps its own "
                           "state); add --no-api")
    if path is None:
        raise IotwasmError("--workers needs a manifest file or directory")
    opts = WorkerOptions(path.resolve(), data.resolve(), name or socket.gethostname().split(".")[0] or "node",
                         check_broker(broker), extra)
    asyncio.run(run_workers(opts, count, console, seconds))


async def run_workers(opts: WorkerOptions, count: int, console: Console, seconds: float = 0.0,
                      grace: float = 30.0) -> None:
    """Run the ingress and `count` workers until SIGINT/SIGTERM (or `seconds`)."""
    own_topic = status_topic(opts.name)
    #: what each worker's own status says of its storage (a full disk, a failing file)
    storage: dict[int, list[str]] = {}

    def merged() -> list[str]:
        return [f"worker {k}: {p}" for k in sorted(storage) for p in storage[k]]

    def status(state: str, reason: str = "") -> bytes:
        held = merged()
        return json.dumps({"node": opts.name, "state": state, "workers": count,
                           **({"storage": held} if held else {}),
                           **({"reason": reason} if reason else {})}).encode()

    upstream = open_bus(opts.broker, will=Will(own_topic, status("offline", "lost"), qos=1, retain=True),
                        client_id=f"iotwasm-node-{opts.name}")
    try:
        await upstream.connect(timeout=10)
    except IotwasmError as e:
        log.warning("broker %s not reachable yet (%s); reconnecting in the background", opts.broker, e)
    sock_dir = tempfile.mkdtemp(prefix="iotwasm-ingress-")   # 0700: the node user's alone
    path = os.path.join(sock_dir, "ingress.sock")
    token = secrets.token_bytes(16)
    ingress = Ingress(upstream, path, count, token)
    await ingress.start()
    # its own connection: messages the workers hold keep the ingress's session's in-flight
    # window full, and a status queued behind them would arrive only once they are through
    watch = open_bus(opts.broker)
    await _watch_workers(watch, opts.name, count, storage)
    workers = Workers(opts, count, path, token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # the ingress, its buses and the workers' handles live as long as this process (cli/heap.py)
    log.info("ingress: %s objects frozen out of the garbage collector's sight", f"{freeze_heap():,}")
    watcher = asyncio.create_task(workers.watch(), name="workers")
    console.print(f"node {opts.name}: {count} workers behind one ingress on {opts.broker}", highlight=False)
    try:
        started, last, online, said = time.monotonic(), 0.0, False, merged()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.1 if not online else 1.0)
            except TimeoutError:
                pass
            if not online and all(w.ready for w in ingress.roster):
                # as a single node: online once every route subscribed, in every worker
                online, said = True, merged()
                await _publish(upstream, own_topic, status("online"))
            elif online and merged() != said:  # a worker's storage failed, or works again
                said = merged()
                await _publish(upstream, own_topic, status("online"))
            if seconds and time.monotonic() - started >= seconds:
                break
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                held = sum(len(w.held) for w in ingress.roster)
                console.print(f"workers joined {ingress.connected()} of {count}, restarts {sum(workers.restarts)}; "
                              f"messages handed {ingress.sent:,}, settled {ingress.settled:,}, waiting for a "
                              f"worker {held:,}", highlight=False)
    finally:
        await workers.stop(grace)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await ingress.close()
        await _publish(upstream, own_topic, status("offline", "stopped"))
        await watch.close()
        await upstream.close()
        try:
            os.unlink(path)
            os.rmdir(sock_dir)
        except OSError:
            pass


def worker_name(node: str, k: int) -> str:
    """The name worker `k` of node `node` runs under (its own status topic, its logs)."""
    return f"{node}-w{k}"


async def _watch_workers(bus, name: str, count: int, storage: dict[int, list[str]]) -> None:
    """Keep `storage[k]` as worker k's own retained status says (`iotwasm/nodes/{name}-w{k}/
    status`): the node's status is what a fleet or an operator watches, and a worker's disk
    problem must show there too."""
    def on(k: int):
        async def handle(msg: Message) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            found = body.get("storage") if isinstance(body, dict) else None
            storage[k] = [str(p) for p in found] if isinstance(found, list) else []
        return handle

    try:
        await bus.connect(timeout=10)
    except IotwasmError as e:
        log.warning("workers' status not followed yet (%s); reconnecting in the background", e)
    for k in range(count):
        try:
            await bus.subscribe(status_topic(worker_name(name, k)), on(k), qos=1, timeout=5)
        except IotwasmError as e:
            log.warning("worker %d's status not followed: %s", k, e)


async def _publish(bus, topic: str, payload: bytes) -> None:
    try:
        await bus.publish(topic, payload, qos=1, retain=True, timeout=2)
    except IotwasmError as e:
        log.warning("status to %s not published: %s", topic, e)
