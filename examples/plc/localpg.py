"""A throwaway PostgreSQL for the demo: Debian's binaries (apt-get install postgresql), a data
directory under /tmp, 127.0.0.1 only; as root the server runs as the `postgres` user."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit(f"PostgreSQL's {name} not found: apt-get install postgresql, or pass --dsn")
    return found[-1]


class LocalPostgres:
    def __init__(self, port: int, user: str, password: str, database: str):
        self.port, self.user, self.password, self.database = port, user, password, database
        self.dir = Path(tempfile.mkdtemp(prefix="iotwasm-plc-pg-"))
        self.data = self.dir / "data"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        pw = self.dir / "pw"
        pw.write_text(password + "\n")
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(pw, "postgres", "postgres")
        subprocess.run([*self._as, _bin("initdb"), "-D", str(self.data), "--auth-local=trust",
                        "--auth-host=scram-sha-256", f"--pwfile={pw}", "-U", user, "--no-sync"],
                       check=True, capture_output=True)
        self.proc = subprocess.Popen([*self._as, _bin("postgres"), "-D", str(self.data), "-p", str(port),
                                      "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "ab"))
        deadline = time.monotonic() + 60
        while subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"PostgreSQL did not start on port {port}: {(self.dir / 'log').read_text()[-800:]}")
            time.sleep(0.1)
        subprocess.run([_bin("createdb"), "-h", str(self.dir), "-p", str(port), "-U", user, database], check=True)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
            self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
