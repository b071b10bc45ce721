"""Real upstream servers for outbound HTTP tests: a threaded HTTP/1.1 server on loopback (optionally TLS, optionally
requiring a client certificate) that counts the connections it accepts, and a throwaway PKI made with openssl.

Routes: ``GET /ping`` -> 200 ``pong`` (Content-Length); ``GET /close`` -> 200 with ``Connection: close``; ``GET /big?bytes=N`` -> N bytes of
``0123456789abcdef`` repeated;
``POST /upload`` reads the body as it arrives (Content-Length or chunked) and answers JSON ``{"bytes", "sha256"}``;
``GET /seen`` waits (up to 10 s) until an upload has delivered its first bytes and answers how many bytes of
uploads have arrived so far (so a guest can ask mid-upload what the server already has); ``GET /whoami`` -> the
client certificate's CN, or ``anonymous``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.upstream_support import serving_in_thread


@dataclass(frozen=True)
class Pki:
    ca_crt: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate (CN=client), by openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=outbound test CA")
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        extra = ["-extfile", "server.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *extra)
    return Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key", directory / "client.crt",
               directory / "client.key")


class CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.tls = tls
        self.lock = threading.Lock()
        self.accepted = 0
        self.uploaded = 0
        self.first_upload_bytes = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        with self.lock:
            self.accepted += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # failed handshakes are what some tests are about


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def log_message(self, *_args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _answer(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/ping":
            self._answer(200, b"pong")
        elif self.path == "/close":
            self.close_connection = True
            self._answer(200, b"bye", ("connection", "close"))
        elif self.path == "/seen":
            self.server.first_upload_bytes.wait(10)
            with self.server.lock:
                seen = self.server.uploaded
            self._answer(200, str(seen).encode())
        elif self.path.startswith("/big?bytes="):
            size = int(self.path.partition("=")[2])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            block = b"0123456789abcdef" * 4096
            while size:
                piece = block[:min(size, len(block))]
                self.wfile.write(piece)
                size -= len(piece)
        elif self.path == "/whoami":
            peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            name = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"),
                        "anonymous")
            self._answer(200, name.encode())
        else:
            self._answer(404, b"no such path")

    def do_POST(self) -> None:  # noqa: N802
        digest = hashlib.sha256()
        total = 0
        for chunk in self._body():
            digest.update(chunk)
            total += len(chunk)
            with self.server.lock:
                self.server.uploaded += len(chunk)
            self.server.first_upload_bytes.set()
        self._answer(200, json.dumps({"bytes": total, "sha256": digest.hexdigest(),
                                      "chunked": "chunked" in self.headers.get("transfer-encoding", "")}).encode(),
                     ("content-type", "application/json"))

    def _body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("transfer-encoding", ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read1(min(left, 65536))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("content-length", "0"))
            while left:
                piece = self.rfile.read1(min(left, 65536))
                if not piece:
                    return
                left -= len(piece)
                yield piece


def server_tls(pki: Pki, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_crt), str(pki.server_key))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.ca_crt))
    return context


@contextlib.contextmanager
def counting_server(tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> Iterator[CountingServer]:
    with serving_in_thread(CountingServer(tls, host)) as server:
        yield server


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
