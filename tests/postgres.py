"""A throwaway PostgreSQL server for the test session: initdb into a temporary folder, listen on loopback.

The suite runs its database tests on SQLite and on this server, so both dialects stay supported. The server
binaries come from Debian's `postgresql` package (`.ci/run` installs it); initdb refuses to run as root, so
as root the server runs as the `postgres` system user. Durability is switched off: tests need speed, not crash
safety.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg

_SUPERUSER = "nudge"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL `bin` folder, or None when no server is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PostgresServer:
    """One server in `folder`, started on a free loopback port; `database()` hands out fresh databases."""

    def __init__(self, binaries: Path, folder: Path) -> None:
        self._bin = binaries
        self._data = folder / "data"
        self._socket = folder / "socket"
        self.port = _free_port()

    def start(self) -> PostgresServer:
        self._socket.mkdir(parents=True)
        self._data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self._data.parent, "postgres")
            for path in (self._data, self._socket):
                shutil.chown(path, "postgres")
        self._run("initdb", "-D", str(self._data), "-U", _SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -k {self._socket} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self._data), "-o", options, "-l", str(self._data / "server.log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")

    def database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self._url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{_SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def _url(self, database: str) -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
