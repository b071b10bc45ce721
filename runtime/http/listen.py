"""The listening socket of the HTTP trigger, from ``SPIN_HTTP_LISTEN_ADDR``.

Bound once by the instance process (in the task's network namespace) before the workers fork, so that every
worker inherits it and a bad or busy address fails the task at start with a message naming the variable, not a
worker later. It never has SO_REUSEPORT: workers share this one socket, and nobody else can join it
(runtime.http.workers).
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from runtime.errors import AppError

#: containerd-shim-spin's variable (and default) for the address the HTTP trigger listens on.
LISTEN_ADDR_ENV = "SPIN_HTTP_LISTEN_ADDR"
DEFAULT_LISTEN_ADDR = "0.0.0.0:80"


class ListenError(AppError):
    """The HTTP listen address is malformed, in use, or not bindable here."""


def parse_listen_addr(addr: str) -> tuple[socket.AddressFamily, str, int]:
    """``"0.0.0.0:80"``, ``"127.0.0.1:3000"``, ``"[::]:80"``, ``":8080"`` (all IPv4 interfaces),
    ``"localhost:3131"`` → family, IP address, port.

    An IP literal is taken as written. A host name is resolved as Spin resolves ``--listen`` /
    ``SPIN_HTTP_LISTEN_ADDR`` (spin crates/trigger-http/src/lib.rs ``parse_listen_addr``): Rust's
    ``to_socket_addrs`` (getaddrinfo, inside the container, so its ``/etc/hosts``), then 127.0.0.1 if it is among
    the answers ("prefer 127.0.0.1 over e.g. [::1]"), else the first answer. ``localhost`` (and ``*.localhost``)
    is loopback even in an image without ``/etc/hosts`` (RFC 6761 §6.3; a scratch Wasm image under ``ctr run``
    has none), as it is on the machines Spin runs on.
    """
    text = addr.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: expected host:port, e.g. 0.0.0.0:80, [::]:80 or "
                          "localhost:3000")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: {port_text!r} is not a port number (0-65535)")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: [{host}] is not an IPv6 address") from None
        return socket.AF_INET6, host, port
    if host == "":
        return socket.AF_INET, "0.0.0.0", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return _resolve(addr, host, port)
    if ip.version == 6:
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: write IPv6 addresses in brackets, e.g. [::1]:80")
    return socket.AF_INET, host, port


def _resolve(addr: str, host: str, port: int) -> tuple[socket.AddressFamily, str, int]:
    """A host name → the address Spin would listen on (``parse_listen_addr``'s docstring)."""
    if not _is_host_name(host):
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: {host!r} is neither an IP address nor a host name "
                          "(use e.g. 0.0.0.0, 127.0.0.1, [::] or localhost)")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        lowered = host.lower().rstrip(".")
        if lowered == "localhost" or lowered.endswith(".localhost"):
            return socket.AF_INET, "127.0.0.1", port
        reason = err.strerror if isinstance(err, socket.gaierror) and err.strerror else str(err)
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: cannot resolve {host!r} in the container: {reason} "
                          "(use an IP address, e.g. 0.0.0.0 or 127.0.0.1)") from None
    found = [(family, sockaddr[0]) for family, _, _, _, sockaddr in answers
             if family in (socket.AF_INET, socket.AF_INET6)]
    if (socket.AF_INET, "127.0.0.1") in found:
        return socket.AF_INET, "127.0.0.1", port
    if not found:
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr!r}: {host!r} resolves to no IP address")
    family, ip = found[0]
    return socket.AddressFamily(family), ip, port


def _is_host_name(host: str) -> bool:
    """Letters, digits, '-', '_' and dots (RFC 1123, plus the '_' resolvers accept): anything else is a typo
    (a path, a URL, a space), not something to send to DNS."""
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) and label.isascii()
        for label in labels)


def bind_listener(addr: str, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``addr``, inheritable by forked workers.

    No SO_REUSEPORT, before or after bind: with it set on the listener, any other process of the same uid in the
    network namespace (another host-network pod run by this shim as root, or any root process) could bind the
    port with SO_REUSEPORT too and silently take a share of the app's connections (a review saw 13 of 40). Without
    it such a bind fails with EADDRINUSE. SO_REUSEADDR only allows rebinding over TIME_WAIT connections of an
    earlier listener; on Linux it never lets two sockets listen on one port.
    """
    family, host, port = parse_listen_addr(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "[::]:80" serves IPv4 too, as Rust's TcpListener does on Linux (bindv6only=0 is the default).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ListenError(f"{LISTEN_ADDR_ENV}={addr}: address already in use") from None
        if err.errno == errno.EACCES:
            raise ListenError(f"{LISTEN_ADDR_ENV}={addr}: permission denied (a port below 1024 needs "
                              f"CAP_NET_BIND_SERVICE)") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise ListenError(f"{LISTEN_ADDR_ENV}={addr}: no such local address in this network namespace") from None
        raise ListenError(f"{LISTEN_ADDR_ENV}={addr}: cannot listen: {err.strerror}") from None
    return sock
