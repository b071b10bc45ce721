"""The narrow seam between the Task service and what actually runs (runwasi's `Instance`).

The Task service talks to every workload through `Instance`: create (returns the pid), start, kill, pids, stats,
update, release, and an `exited` future fed by the reaper. `shim.wasm.instance` forks an instance process from the
daemon; `shim.runc.instance` runs pause and sidecar containers with the node's runc. Both satisfy this Protocol by
shape, so neither imports the Task service.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from shim.process.reaper import ExitStatus
from shim.process.stdio import TaskStdio


class Instance(Protocol):
    pid: int
    exited: asyncio.Future[ExitStatus]
    #: None when Exec can run more processes in the task (`exec`), else why it cannot.
    exec_refusal: str | None

    async def create(self) -> int: ...
    def start(self) -> int: ...
    def kill(self, sig: int, all_processes: bool) -> None: ...
    def pids(self) -> list[int]: ...
    def stats(self) -> tuple[str, bytes]: ...
    def update(self, resources: dict) -> None: ...
    def oom_killed(self) -> bool: ...
    def release(self) -> list[str]: ...
    async def exec(self, exec_id: str, process: dict[str, Any], stdio: TaskStdio,
                   console_socket: str | None) -> int: ...
