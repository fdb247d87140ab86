"""A PostgreSQL server of the tests' own: `initdb` in a temporary folder, listening on 127.0.0.1 at
a free port (and on a unix socket in that folder), password authentication (scram-sha-256) for
every connection, stopped and removed at the end. Debian's `postgresql` package provides it
(.ci/run installs it where it is missing); as root, the server runs as the package's `postgres`
user, since PostgreSQL refuses to run as root."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg

USER, PASSWORD, DATABASE = "forecaster", "s3cret-pw", "postgres"


def binary(name: str) -> str:
    """A server program: on PATH, or in Debian's versioned folder (the newest)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Postgres:
    folder: Path
    port: int

    def uri(self, password: str | None = PASSWORD, user: str = USER) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{DATABASE}"

    def execute(self, *statements: str) -> None:
        """Run SQL statements and commit them."""
        with pg.connect(self.uri()) as connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            connection.commit()

    def insert(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """Rows into a table, as parameters (bound by the driver, not formatted into SQL)."""
        if not rows:
            return
        marks = ", ".join(f"${index + 1}" for index in range(len(rows[0])))
        with pg.connect(self.uri()) as connection, connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            connection.commit()


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A fresh server, stopped and its folder removed when the block ends."""
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="timedistill-pg-"))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner is not None else {}
    secret = folder / "password"
    secret.write_text(PASSWORD + "\n")
    if owner is not None:
        os.chown(secret, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_port()
    subprocess.run([binary("initdb"), "-D", str(data), "-U", USER, "--pwfile", str(secret), "--auth=scram-sha-256",
                    "-E", "UTF8", "--no-locale", "--no-sync"], check=True, capture_output=True, **run_as)
    server = [binary("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60"]
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
    try:
        subprocess.run([*server, "-o", options, "start"], check=True, capture_output=True, **run_as)
        yield Postgres(folder, port)
    finally:
        subprocess.run([*server, "-m", "immediate", "stop"], capture_output=True, **run_as)
        shutil.rmtree(folder, ignore_errors=True)
