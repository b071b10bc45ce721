"""A real PostgreSQL 15 (Debian's postgresql-15) on 127.0.0.1 for the tests of Spin's PostgreSQL APIs.

The server runs as the ``postgres`` system user (postgres refuses to run as root) from a data directory of its own
under /tmp (pytest's tmp dirs are 0700 root, which that user cannot enter), listens on a free loopback port, and
authenticates TCP clients with SCRAM-SHA-256 only, as a managed PostgreSQL does. A test role with a password owns
a test database. Everything is removed again when the context ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    #: The superuser's password (role ``postgres``), for tests that need to look at server state.
    admin_password: str
    #: With ``running_postgres(tls=True)``: the PEM file of the CA that signed the server's certificate.
    ca_file: Path | None = None

    def url(self, *, user: str | None = None, password: str | None = None, database: str | None = None,
            port: int | None = None, query: str = "") -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        credentials = f"{user}:{password}@" if password else f"{user}@"
        suffix = f"?{query}" if query else ""
        return (f"postgres://{credentials}{self.host}:{self.port if port is None else port}/"
                f"{self.database if database is None else database}{suffix}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _as_service_user(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, user=SERVICE_USER, group=SERVICE_USER, extra_groups=[], check=True,
                          capture_output=True, text=True, **kwargs)


def _make_certificates(root: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl): (ca.pem, server.pem, server.key)."""
    ca_key, ca, key, csr, cert = (root / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    openssl = ["openssl"]
    subprocess.run(openssl + ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
                              str(ca), "-days", "2", "-subj", "/CN=spin-shim test CA"], check=True, capture_output=True)
    subprocess.run(openssl + ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                              "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    extensions = root / "san.cnf"
    extensions.write_text("subjectAltName = IP:127.0.0.1\n")
    subprocess.run(openssl + ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                              "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions)],
                   check=True, capture_output=True)
    for path in (key, cert):
        shutil.chown(path, SERVICE_USER, SERVICE_USER)
    key.chmod(0o600)
    return ca, cert, key


@contextlib.contextmanager
def running_postgres(*, tls: bool = False) -> Iterator[PostgresServer]:
    """initdb + postgres on a free loopback port; a role ``spin`` (password) owning database ``spindb``. With
    ``tls``, the server also offers TLS with a certificate for 127.0.0.1 from a CA of its own, whose PEM file is
    the server's ``ca_file``."""
    if not (PG_BIN / "postgres").is_file():
        raise RuntimeError(f"PostgreSQL 15 is not installed ({PG_BIN}); run scripts/setup.sh")
    root = Path(tempfile.mkdtemp(prefix="spin-shim-pg-"))
    process: subprocess.Popen | None = None
    try:
        os.chmod(root, 0o755)
        shutil.chown(root, SERVICE_USER, SERVICE_USER)
        data, sockets = root / "data", root / "sockets"
        admin_password, password = secrets.token_hex(12), "s3cr3t-" + secrets.token_hex(6)
        pwfile = root / "pwfile"
        pwfile.write_text(admin_password + "\n")
        shutil.chown(pwfile, SERVICE_USER, SERVICE_USER)
        _as_service_user([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                          "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                         cwd=root)
        _as_service_user(["mkdir", "-m", "700", str(sockets)])
        port = _free_port()
        tls_settings: list[str] = []
        ca_file: Path | None = None
        if tls:
            ca_file, cert, key = _make_certificates(root)
            tls_settings = ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
        log = (root / "postgres.log").open("wb")
        process = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=120", *tls_settings],
            user=SERVICE_USER, group=SERVICE_USER, extra_groups=[], cwd=root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while not (_accepts(port) and (sockets / f".s.PGSQL.{port}").exists()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {(root / 'postgres.log').read_text()[-3000:]}")
            time.sleep(0.05)
        # Two -c: CREATE DATABASE cannot run in the implicit transaction of a multi-statement string.
        _as_service_user(["psql", "-h", str(sockets), "-p", str(port), "-U", "postgres", "-d", "postgres",
                          "-v", "ON_ERROR_STOP=1", "-q", "-c", f"CREATE ROLE spin LOGIN PASSWORD '{password}'",
                          "-c", "CREATE DATABASE spindb OWNER spin"], cwd=root)
        yield PostgresServer("127.0.0.1", port, "spin", password, "spindb", admin_password, ca_file)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # fast shutdown (SIGTERM's smart one waits for every client)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)
