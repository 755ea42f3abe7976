"""A real, throwaway PostgreSQL server (Debian's `postgresql` package) on 127.0.0.1 and a free port.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres`
user the package creates. Password authentication (scram-sha-256) is on, so clients must really
pass the password.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.seaweed import free_ports

PASSWORD = "pg-test-password"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    which = shutil.which(name)
    if which is None:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install postgresql (scripts/install-system-deps)")
    return which


@dataclass
class Postgres:
    port: int

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db: str, sql: str) -> str:
        result = subprocess.run(
            ["psql", "--no-password", "-v", "ON_ERROR_STOP=1", "-qAt", "--dbname", self.dsn(db), "-c", sql],
            capture_output=True,
            text=True,
            env=dict(os.environ, PGPASSWORD=PASSWORD),
            timeout=60,
            check=True,
        )
        return result.stdout.strip()


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    base = Path(tempfile.mkdtemp(prefix="sentinel-pg-"))
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else None
    try:
        (base / "pw").write_text(PASSWORD + "\n")
        if as_root:
            shutil.chown(base, "postgres")
            shutil.chown(base / "pw", "postgres")
        data = base / "data"
        subprocess.run(
            [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={base / 'pw'}"],
            user=user,
            check=True,
            capture_output=True,
            timeout=120,
        )
        (port,) = free_ports(1)
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={base}", "-c", "fsync=off"]
        with open(base / "log", "wb") as log:
            server = subprocess.Popen(
                [pg_bin("postgres"), "-D", str(data), "-p", str(port), *options],
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(
                [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start: " + (base / "log").read_text()[-2000:])
                time.sleep(0.1)
            yield Postgres(port)
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
