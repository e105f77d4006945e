"""Real brokers for the messaging tests: a private `mosquitto` and `nats-server -js` per test.

Each broker runs on a free loopback port (never the machine's own 1883/4222), with its config,
data and log in a temporary directory, so a test can stop it, kill -9 it and start it again on
the same port with the same data (mosquitto's persistence file, the JetStream store).

The fixtures `mosquitto` and `nats_server` are registered for every test by conftest.py
(`pytest_plugins`); a test module names them as parameters and imports nothing.

A missing broker binary fails the test with the Debian package to install; it never skips.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ports import free_port  # noqa: F401  (re-exported: tests import it from here)

READY_TIMEOUT = 10.0

#: brokers started by this process, killed at exit if a test run is interrupted
_RUNNING: set["BrokerProcess"] = set()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_RUNNING):
        try:
            broker.kill()
        except Exception:
            pass


def find_binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"{name} is not installed: the messaging tests need a real broker. "
        f"Install the Debian package '{package}' (apt-get install {package}).",
        pytrace=False,
    )


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class BrokerProcess:
    """A broker process on a fixed port; start/stop/kill/restart keep port and data."""

    name = "broker"
    package = "broker"

    def __init__(self, workdir: Path, port: int | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.config_path = self.dir / f"{self.name}.conf"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "BrokerProcess":
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.proc.pid})")
        self.write_config()
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start #{self.starts + 1} on port {self.port} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True,
            )
        self.starts += 1
        _RUNNING.add(self)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting on port "
                    f"{self.port}; log {self.log_path}:\n{self.log_tail()}"
                )
            if port_open(self.host, self.port):
                return
            time.sleep(0.02)  # polling a port that cannot notify us
        raise RuntimeError(
            f"{self.name} did not accept connections on {self.host}:{self.port} within "
            f"{timeout}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in time."""
        if not self.running:
            self.proc = None
            _RUNNING.discard(self)
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        _RUNNING.discard(self)

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to save anything or say goodbye."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        _RUNNING.discard(self)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung broker).

        Returns once every thread of the broker is stopped: the signal is delivered
        asynchronously, and a broker still running for a moment would answer.
        """
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} (pid {self.proc.pid}) did not stop within {timeout}s")
            time.sleep(0.001)  # the kernel offers no notification of a stopped process

    def _all_threads_stopped(self) -> bool:
        task_dir = Path(f"/proc/{self.proc.pid}/task")
        for task in task_dir.iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # thread gone
            state = stat.rsplit(")", 1)[1].split()[0]
            if state not in ("T", "t"):
                return False
        return True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, *, kill: bool = False) -> "BrokerProcess":
        self.kill() if kill else self.stop()
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pid={self.proc.pid if self.proc else None}>"


class Mosquitto(BrokerProcess):
    name = "mosquitto"
    package = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, *, persistence: bool = True,
                 options: dict[str, str | int] | None = None):
        super().__init__(workdir, port)
        self.binary = find_binary("mosquitto", "mosquitto")
        self.persistence = persistence
        #: further mosquitto.conf settings, e.g. {"max_inflight_messages": 5}; they win over
        #: the defaults below
        self.options = dict(options or {})

    def write_config(self) -> None:
        # started as root, mosquitto switches to the user named here (root: stays root)
        user = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"user {user}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.data_dir}/",
        ]
        settings: dict[str, str | int] = {"max_queued_messages": 10000, **self.options}
        lines += [f"{key} {value}" for key, value in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


class NatsServer(BrokerProcess):
    name = "nats-server"
    package = "nats-server"

    def __init__(self, workdir: Path, port: int | None = None, *, jetstream: bool = True):
        super().__init__(workdir, port)
        self.binary = find_binary("nats-server", "nats-server")
        self.jetstream = jetstream

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    def write_config(self) -> None:
        lines = [
            f"listen: {self.host}:{self.port}",
            # a fixed name: JetStream finds its own store again after a restart
            f'server_name: "iotwasm-test-{self.port}"',
        ]
        if self.jetstream:
            lines.append(
                f'jetstream {{ store_dir: "{self.store_dir}", max_memory_store: 64MB, '
                "max_file_store: 256MB }"
            )
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        cmd = [self.binary, "-c", str(self.config_path), "-l", str(self.log_path)]
        if self.jetstream:
            cmd.append("-js")
        return cmd

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


def stop_processes(procs, timeout: float = 20.0) -> None:
    """SIGTERM every process still running, all at once, then wait; SIGKILL what does not exit."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _broker_fixture(cls, tmp_path_factory):
    broker = cls(tmp_path_factory.mktemp(cls.name))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill() if broker.running else None
        broker.proc = None


@pytest.fixture
def mosquitto(tmp_path_factory):
    """A private mosquitto (MQTT 3.1.1, anonymous, persistence on) on a free port."""
    yield from _broker_fixture(Mosquitto, tmp_path_factory)


@pytest.fixture
def nats_server(tmp_path_factory):
    """A private nats-server with JetStream (file store kept across restarts) on a free port."""
    yield from _broker_fixture(NatsServer, tmp_path_factory)
