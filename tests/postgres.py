"""A throwaway PostgreSQL cluster in a temp dir on a free port: for the tests and bench/soak.py."""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """The URL of a new cluster's `postgres` database, while the block runs."""
    bindir = _pg_bin()
    if bindir is None:  # `make test` installs them (scripts/test-setup.sh)
        raise RuntimeError("PostgreSQL server binaries are missing; run scripts/test-setup.sh (make test does)")
    # Not under pytest's temp dir: PostgreSQL may run as another user, who must reach it.
    base = Path(tempfile.mkdtemp(prefix="jobnest-pg-"))
    base.chmod(0o755)
    data = base / "data"
    port = _free_port()
    as_user: list[str] = []
    if os.getuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "jobnest", "--auth=trust", "--locale=C", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data.parent / "log"), "-w", "-o",
        f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://jobnest@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def new_database(postgres_url: str, name: str) -> str:
    """The URL of a fresh, empty database `name` of the cluster at `postgres_url`."""
    import sqlalchemy as sa
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
