"""`start`'s side: ask this build's fork server for the daemon; spawn a server when there is none.

Until the request is sent, every failure means "fork the daemon yourself" (the cold path, as before the server
existed). Once the listening socket is in the server's hands, falling back could leave two daemons serving one
socket, so a lost answer is an error of `start` instead (containerd and kubelet retry a failed start).
"""

from __future__ import annotations

import os
import socket
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any

from shim.forkserver import protocol
from shim.forkserver.adopt import ARGV_PADDING, StartContext
from shim.forkserver.build_key import build_key

#: Connecting and sending are local and quick; the answer waits for two forks.
CONNECT_SECONDS = 1.0
ANSWER_SECONDS = 10.0
#: containerd's environment may turn the server off (the cold path for every start).
DISABLE_ENV = "SPIN_SHIM_FORK_SERVER"


class ForkServerLost(Exception):
    """The server took the socket and gave no answer."""


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") not in ("0", "false", "off")


def fork_through_server(listener: socket.socket, daemon_args: Any, argv: list[str]) -> int | None:
    """The daemon's pid, or None when `start` must fork it itself (a server then is spawned for next time)."""
    key = build_key()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(CONNECT_SECONDS)
        try:
            conn.connect(protocol.socket_path(key))
            protocol.send(conn, {"version": protocol.PROTOCOL_VERSION, "key": key,
                                 "daemon": daemon_args.as_dict(),
                                 "context": StartContext.capture(argv).to_json()}, [listener.fileno()])
        except OSError:
            spawn_server(key)
            return None
        conn.settimeout(ANSWER_SECONDS)
        try:
            answer, _ = protocol.receive(conn)
        except (OSError, ValueError) as exc:
            raise ForkServerLost(f"the fork server gave no answer: {exc}") from None
    finally:
        conn.close()
    if "pid" in answer:
        return int(answer["pid"])
    return None  # refused: it forked nothing


def spawn_server(key: str) -> None:
    """Start this build's server, detached (its own session, stdio on /dev/null, cwd /), not waiting for it."""
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 65536)
        os.chdir("/")
        executable = os.path.abspath(sys.argv[0])
        os.execv(executable, [executable, "fork-server", key, " " * ARGV_PADDING])
    finally:
        os._exit(127)
