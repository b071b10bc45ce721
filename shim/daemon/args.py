"""What a shim daemon is started with: handed over in memory across fork by `start`, or as JSON through the fork
server (shim/forkserver). A leaf module, so the daemon, `start` and the server share it without importing each
other."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any

from shim.record import Record


class DaemonArgs(Record):
    """Everything the daemon needs, handed over in memory across fork."""

    namespace: str
    containerd_address: str
    ttrpc_address: str | None
    task_id: str
    bundle: str
    socket_path: str
    debug: bool
    options: dict[str, Any] = {}
    #: The warm fork server that forked this daemon (shim/forkserver), 0 when `start` forked it itself.
    fork_server_pid: int = 0
