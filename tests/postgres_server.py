"""A throwaway PostgreSQL server for the tests: found on PATH or where Debian keeps it, started on a free port.

Under ``CI=true`` a missing server is a failure, never a skip: ``.ci/run`` installs one
(``.ci/ensure-postgres``), so a CI machine without it means the set-up broke.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from agentgraph.slm.server import free_port


def server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's ``/usr/lib/postgresql/NN/bin``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda folder: int(Path(folder).parent.name))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def require_server_binaries() -> Path:
    """The server's binaries, or a skip (a failure under CI=true) that says how to install them."""
    folder = server_binaries()
    if folder is None:
        why = "PostgreSQL server binaries (initdb, pg_ctl) are neither on PATH nor in /usr/lib/postgresql/*/bin; install them with .ci/ensure-postgres"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return folder


class PostgresServer:
    """One server in a temporary folder, listening on 127.0.0.1 only, trusting local connections."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="agentgraph-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        # initdb refuses to run as root; the server then runs as the postgres account.
        self._as_server_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_server_user:
            shutil.chown(self.folder, "postgres")

    def _run(self, program: str, *arguments: str) -> None:
        done = subprocess.run(
            [*self._as_server_user, str(self.binaries / program), *arguments], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(arguments)} failed ({done.returncode}): {done.stderr or done.stdout}"
            )

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "agent", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://agent@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a fresh, empty database on this server (tests never see each other's tables)."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
