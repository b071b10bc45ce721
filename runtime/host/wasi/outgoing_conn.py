"""One outbound HTTP/1.1 connection: a socket (TCP, or TLS over it) driven by h11's client state machine.

h11 owns the framing (Content-Length or chunked request bodies, response bodies by length, chunks or close, HEAD
and 1xx/204/304 rules) and says when a connection may carry another request (both sides DONE, neither asked to
close); this module is the thin blocking loop around it, with a timeout on every socket call. Errors become the
wasi:http ``error-code`` Spin's client gives for them (spin crates/factor-outbound-http/src/wasi.rs
``connect_tcp`` / ``connect_tls``): a failed name lookup is ``DNS-error`` with rcode "address not available", any
other failed connect is ``connection-refused``, a connect past its timeout ``connection-timeout``, any failed TLS
handshake ``TLS-protocol-error`` (rustls errors are not told apart there either; the reason goes to the log).
"""

from __future__ import annotations

import re
import socket
import sys
from typing import TYPE_CHECKING, Any

import h11

from runtime.host.values import Variant

if TYPE_CHECKING:
    import ssl

#: Bytes of a response head h11 accepts (hyper's default read buffer is ~400 KiB; 64 KiB matches the server).
MAX_RESPONSE_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
_KEEP_ALIVE_TIMEOUT = re.compile(rb"timeout\s*=\s*(\d+)", re.IGNORECASE)


class ExchangeError(Exception):
    """A failure of the exchange, with the error-code the guest gets."""

    def __init__(self, code: Variant, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def dns_error() -> Variant:
    return Variant("DNS-error", {"rcode": "address not available", "info-code": 0})


def connect(host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> socket.socket:
    """A connected (and, with ``tls``, handshaken) socket; ExchangeError with Spin's error-codes otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ExchangeError(dns_error(), f"cannot resolve {host!r}: {exc}") from None
    last: Exception | None = None
    sock: socket.socket | None = None
    for family, kind, proto, _, address in infos:
        candidate = socket.socket(family, kind, proto)
        candidate.settimeout(timeout)
        try:
            candidate.connect(address)
        except TimeoutError:
            candidate.close()
            raise ExchangeError(Variant("connection-timeout"), f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            candidate.close()
            last = exc
            continue
        sock = candidate
        break
    if sock is None:
        raise ExchangeError(Variant("connection-refused"), f"cannot connect to {host}:{port}: {last}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host.strip("[]"))
    except TimeoutError:
        sock.close()
        raise ExchangeError(Variant("connection-timeout"), f"TLS handshake with {host}:{port} timed out") from None
    except OSError as exc:  # ssl.SSLError included
        sock.close()
        raise ExchangeError(Variant("TLS-protocol-error"), f"TLS handshake with {host}:{port} failed: {exc}") from None


class ClientConnection:
    """One connection, used by one exchange at a time; ``reusable`` after a clean exchange."""

    def __init__(self, sock: socket.socket, key: Any) -> None:
        self.sock = sock
        self.key = key
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        #: Exchanges this connection served before the current one.
        self.uses = 0
        self.broken = False
        #: Seconds the server said it keeps the connection idle (``Keep-Alive: timeout=N``), if it did.
        self.server_idle: float | None = None
        #: Bytes of response received in the current exchange (0 after a reuse = the server closed it idle).
        self.received = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.broken = True
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def reusable(self) -> bool:
        h = self.h11
        return not self.broken and h.our_state is h11.DONE and h.their_state is h11.DONE

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()
        self.uses += 1
        self.received = 0

    def send(self, event: Any, timeout: float) -> None:
        """Frame ``event`` and write it whole; ExchangeError (and the connection broken) on failure."""
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as exc:
            self.broken = True
            raise ExchangeError(_request_framing_error(exc), f"invalid request: {exc}") from None
        if not data:
            return
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(data)
        except TimeoutError:
            self.broken = True
            raise ExchangeError(Variant("connection-write-timeout"), "sending the request timed out") from None
        except OSError as exc:
            self.broken = True
            raise ExchangeError(_io_error_code(exc), f"sending the request: {exc}") from None

    def next_event(self, timeout: float) -> Any:
        """The next response event (Response, InformationalResponse, Data, EndOfMessage), reading as needed."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.broken = True
                raise ExchangeError(Variant("HTTP-protocol-error"), f"invalid response: {exc}") from None
            if event is h11.NEED_DATA:
                self._receive(timeout)
                continue
            if isinstance(event, h11.ConnectionClosed):
                self.broken = True
                code = "HTTP-response-incomplete" if self.received else "connection-terminated"
                raise ExchangeError(Variant(code), "the server closed the connection")
            if isinstance(event, h11.Response):
                self._note_keep_alive(event.headers)
            return event

    def _receive(self, timeout: float) -> None:
        try:
            self.sock.settimeout(timeout)
            # Acknowledge at once (Linux resets this after each receive): a server that writes its head and its
            # body in two segments without TCP_NODELAY (Python's http.server does) otherwise holds the body until
            # our delayed ACK, 40 ms per request on a kept-alive connection (measured: 44.8 ms vs 1.5 ms).
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            self.broken = True
            raise ExchangeError(Variant("connection-read-timeout"), "waiting for the response timed out") from None
        except OSError as exc:
            self.broken = True
            raise ExchangeError(_io_error_code(exc), f"reading the response: {exc}") from None
        self.received += len(data)
        try:
            self.h11.receive_data(data)
        except RuntimeError as exc:
            self.broken = True
            raise ExchangeError(Variant("HTTP-protocol-error"), f"invalid response: {exc}") from None

    def _note_keep_alive(self, headers: Any) -> None:
        for name, value in headers:
            if name == b"keep-alive":
                match = _KEEP_ALIVE_TIMEOUT.search(value)
                if match:
                    self.server_idle = float(match.group(1)) - 1.0


def _io_error_code(exc: OSError) -> Variant:
    """A TLS failure mid-exchange (an alert, a bad record) is a protocol error; anything else a lost connection.
    ``ssl`` is looked up, not imported: plain-HTTP workers need not pay its import (17 ms measured)."""
    ssl_module = sys.modules.get("ssl")
    if ssl_module is not None and isinstance(exc, ssl_module.SSLError):
        return Variant("TLS-protocol-error")
    return Variant("connection-terminated")


def _request_framing_error(exc: h11.LocalProtocolError) -> Variant:
    text = str(exc).lower()
    if "content-length" in text or "too much data" in text or "too little data" in text:
        return Variant("HTTP-request-body-size", None)
    return Variant("HTTP-protocol-error")
