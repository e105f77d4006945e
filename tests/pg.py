"""A throwaway PostgreSQL server for tests: Debian's binaries, a data directory under /tmp,
a free port on 127.0.0.1 (never the shared 5432 one). PostgreSQL refuses to run as root, so as
root the server runs as the `postgres` user over a directory handed to it."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from brokers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt-get install postgresql; scripts/setup.sh)")
    return found[-1]


class PostgresServer:
    def __init__(self, user: str = "iot", database: str = "plant", password: str = "s3cret-pw"):
        self.dir = Path(tempfile.mkdtemp(prefix="iotwasm-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user, self.database, self.password = user, database, password
        self.proc: subprocess.Popen | None = None
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        pwfile = self.dir / "pw"
        pwfile.write_text(password + "\n")
        if self._as:
            shutil.chown(pwfile, "postgres", "postgres")
        # TCP connections need the password (scram), the server's own socket does not
        subprocess.run([*self._as, _bin("initdb"), "-D", str(self.data), "--auth-local=trust",
                        "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-U", user, "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        self.proc = subprocess.Popen([*self._as, _bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                                      "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "ab"))
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True)
            if r.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {(self.dir / 'log').read_text()[-2000:]}")
            time.sleep(0.1)
        if self.database:
            subprocess.run([_bin("createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", self.user,
                            self.database], capture_output=True)   # exists already after a restart

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the database host goes away."""
        if self.proc is not None and self.proc.poll() is None:
            # runuser's child is the postmaster: signal the process group's postgres directly
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
            self.proc.wait(timeout=60)
        self.proc = None

    def sql(self, query: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn, password=self.password, autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
