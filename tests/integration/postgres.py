"""A real PostgreSQL server for the integration tests and the benchmarks, as production runs
the hub (RDS PostgreSQL, ``SNH_DB_URL``; docs/deployment.md, section 8).

Debian's ``postgresql`` package (``make test`` installs it) provides the binaries; each test
session starts its own server: a data directory of its own under ``/tmp``, loopback only, a
free port, password authentication (SCRAM, as RDS), the driver production uses
(``postgresql+psycopg``). Every hub state directory gets a database of its own, named after
the directory, so a hub restarted on its state directory finds its data again.

PostgreSQL refuses to run as root: as root (CI, containers) the server runs as the package's
``postgres`` user (``setpriv``, which execs, so the process started is the postmaster).
Durability settings are off (``fsync``, ``synchronous_commit``): a test server's data does
not outlive the session, and the SQL it answers is the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from localcloud.ports import free_port

#: The role the hubs connect as (the owner of their databases).
ROLE = "hub"


def binaries() -> Path:
    """The newest installed PostgreSQL's ``bin`` directory (Debian keeps each major version
    in ``/usr/lib/postgresql/<version>/bin``, outside ``PATH``)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): `make test` "
        "installs Debian's postgresql; SNH_TEST_DATABASE=sqlite runs the hubs on SQLite"
    )


def _postmaster(bin_dir: Path, data: Path, run_as: list[str], port: int) -> subprocess.Popen:
    """Start the postmaster of ``data`` on ``port``; its output goes to ``postgres.log``
    beside ``data`` (each attempt's replaces the last)."""
    base = data.parent
    log = base / "postgres.log"
    with log.open("wb") as out:
        if run_as:
            os.chown(log, pwd.getpwnam("postgres").pw_uid, -1)
        return subprocess.Popen(
            [
                *run_as,
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={base}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=base,
            start_new_session=True,
        )


@dataclass
class PostgresServer:
    base: Path
    port: int
    password: str
    proc: subprocess.Popen
    created: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, timeout: float = 60.0) -> PostgresServer:
        """initdb a fresh cluster and start it; raises with the server's log if it does not
        accept connections within ``timeout``."""
        bin_dir = binaries()
        base = Path(tempfile.mkdtemp(prefix="snh-postgres-"))
        password = secrets.token_hex(16)
        (base / "password").write_text(password + "\n")
        run_as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (base, base / "password"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            run_as = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        data = base / "data"
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                ROLE,
                "--pwfile",
                str(base / "password"),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-locale",
            ],
            check=True,
            capture_output=True,
            cwd=base,
        )
        # The port is free when chosen and bound a moment later: another worker or a hub
        # may take it in between; the postmaster then exits, and another port is tried.
        for _attempt in range(5):
            port = free_port()
            server = cls(base, port, password, _postmaster(bin_dir, data, run_as, port))
            deadline = time.monotonic() + timeout
            while server.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with server.connect("postgres"):
                        return server
                except psycopg.OperationalError:
                    time.sleep(0.1)
            log = (base / "postgres.log").read_text(errors="replace")
            server.stop(keep_files=True)
            if "could not bind" not in log and "already in use" not in log:
                break
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {log[-2000:]}")

    def connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=ROLE,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database``, as ``SNH_DB_URL`` holds it in production."""
        return f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create ``name`` (once) and return its URL."""
        if name not in self.created:
            with self.connect("postgres") as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{name}"')
            self.created.add(name)
        return self.url(name)

    def database_for(self, state_dir: str | os.PathLike[str]) -> str:
        """The URL of the database of the hub whose state directory is ``state_dir``."""
        digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
        return self.database(f"hub_{digest}")

    def stop(self, *, keep_files: bool = False) -> None:
        """Fast shutdown (SIGINT: sessions ended, no wait for clients), then the files."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not keep_files:
            shutil.rmtree(self.base, ignore_errors=True)
