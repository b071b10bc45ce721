"""The fork server's socket and its one exchange: `start` sends a JSON request with the daemon's listening socket
as SCM_RIGHTS, the server answers ``{"pid": N}`` once the daemon exists, or ``{"refused": why}`` having forked
nothing. SOCK_SEQPACKET keeps each message whole."""

from __future__ import annotations

import json
import os
import socket
TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any

#: Root-only (0700): the sockets of the servers of every installed build. A daemon forked by a server is root.
SOCKET_DIR = "/run/containerd-shim-spin"
PROTOCOL_VERSION = 1
#: A request carries start's environment: bounded so a server never buffers without limit.
MAX_MESSAGE_BYTES = 1 << 20


def socket_path(key: str) -> str:
    return os.path.join(SOCKET_DIR, f"fork-{key}.sock")


def lock_path(key: str) -> str:
    """Held (flock) by the one server of a build for its whole life: concurrent spawns leave one server."""
    return os.path.join(SOCKET_DIR, f"fork-{key}.lock")


def make_socket_dir() -> None:
    os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)
    os.chmod(SOCKET_DIR, 0o700)


def send(conn: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.send(data)


def receive(conn: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """One message (and up to max_fds fds); ValueError for anything but a JSON object."""
    data, fds, flags, _ = socket.recv_fds(conn, MAX_MESSAGE_BYTES, max_fds)
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError("message truncated")
        if not data:
            raise ValueError("connection closed")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, fds
