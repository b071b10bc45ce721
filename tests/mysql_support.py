"""A real MariaDB server (Debian's mariadb-server, installed by scripts/setup.sh) on 127.0.0.1 for the tests of
Spin's MySQL API: a fresh data directory, a test user with a password and a database of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

#: A password with the characters a URL must percent-encode, so the tests show they are decoded (and masked).
PASSWORD = "s3cr:t@p/ss w%rd"
USER = "spin"
DATABASE = "spintest"

#: Small InnoDB files: the data directory is ~22 MiB instead of ~114 MiB with the defaults, and starts in ~1 s.
_SERVER_OPTIONS = ("--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M", "--skip-log-bin")


@dataclass(frozen=True)
class MariaDb:
    host: str
    port: int
    user: str
    password: str
    database: str
    socket_path: Path

    def url(self, *, host: str | None = None, password: str | None = None, database: str | None = None) -> str:
        """``mysql://user:password@host:port/database`` with the password percent-encoded."""
        secret = quote(self.password if password is None else password, safe="")
        return (f"mysql://{self.user}:{secret}@{host or self.host}:{self.port}/"
                f"{self.database if database is None else database}")

    def admin(self, sql: str) -> str:
        """Run ``sql`` as the server's root (unix-socket login) with Debian's mariadb client; its output."""
        return subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket_path}", "-u", "root",
                               "--batch", "--skip-column-names", "-e", sql],
                              check=True, capture_output=True, text=True, timeout=30).stdout


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as conn:
            return len(conn.recv(4)) == 4  # the server's handshake packet header
    except OSError:
        return False


@contextlib.contextmanager
def running_mariadb(workdir: Path, bind: str = "127.0.0.1", port: int | None = None,
                    options: tuple[str, ...] = ()) -> Iterator[MariaDb]:
    """Start mariadbd on a free port of ``bind`` (or ``port``, to start it again on the same data directory)
    with its data directory and socket in ``workdir`` and the server ``options`` (``--max-connections=300``);
    create the test user and database; yield how to reach it. The server is stopped when the block ends; the
    data directory stays (a later call reuses it)."""
    for binary in ("mariadbd", "mariadb-install-db", "mariadb"):
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
            raise RuntimeError(f"{binary} is not installed; run scripts/setup.sh (mariadb-server)")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    workdir.mkdir(parents=True, exist_ok=True)
    datadir, socket_path = workdir / "data", workdir / "mariadb.sock"
    as_root = ("--user=root",) if os.geteuid() == 0 else ()
    fresh = not (datadir / "mysql").is_dir()
    if fresh:
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", *as_root,
                        "--auth-root-authentication-method=socket", "--skip-test-db", *_SERVER_OPTIONS],
                       check=True, capture_output=True, timeout=120)
    port = port or _free_port(bind)
    log_path = workdir / "mariadb.log"
    process = subprocess.Popen(
        [mariadbd, "--no-defaults", f"--datadir={datadir}", *as_root, f"--socket={socket_path}",
         f"--port={port}", f"--bind-address={bind}", f"--pid-file={workdir / 'mariadb.pid'}",
         f"--log-error={log_path}", "--skip-name-resolve", *_SERVER_OPTIONS, *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = MariaDb(bind, port, USER, PASSWORD, DATABASE, socket_path)
    try:
        deadline = time.monotonic() + 30
        while not (_listening(bind, port) and socket_path.exists()):
            if process.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
                raise RuntimeError(f"mariadbd did not start: {log}")
            time.sleep(0.05)
        if fresh:
            secret = PASSWORD.replace("'", "''")
            server.admin(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{secret}'; CREATE DATABASE {DATABASE}; "
                         f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'%';")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
