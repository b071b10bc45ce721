"""The one place child exits are collected: SIGCHLD -> waitpid(-1) -> the pid's future.

The daemon is a child subreaper, so every instance process, worker and orphaned logger
ends up as our child; one reaper that waits for all of them means no exit is missed and
no zombie is left, and every consumer (Wait, State, the /tasks/exit event) reads the same
result (the Go runc shim's reaper, STYLE.md). Nothing else in the daemon may call
waitpid: asyncio's child watchers are never used, processes are forked or spawned and
registered with `watch` before the loop runs again, so a SIGCHLD cannot be handled
before the pid is known.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger("shim.process.reaper")

# Exits of pids nobody watched (yet); bounded so a chatty logger cannot grow it.
_UNCLAIMED_LIMIT = 256


@dataclass(frozen=True)
class ExitStatus:
    code: int  # a signal n gives 128+n, as a shell and runc report it
    exited_at_ns: int  # wall clock, for exited_at
    signaled: int | None = None


def exit_status_from_wait(status: int) -> ExitStatus:
    now = time.time_ns()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ExitStatus(128 + sig, now, sig)
    return ExitStatus(os.WEXITSTATUS(status), now)


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watchers: dict[int, asyncio.Future[ExitStatus]] = {}
        self._unclaimed: OrderedDict[int, ExitStatus] = OrderedDict()

    def install(self) -> None:
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def watch(self, pid: int) -> asyncio.Future[ExitStatus]:
        """A future resolved with the pid's exit; call right after fork/spawn."""
        future = self._watchers.get(pid)
        if future is None:
            future = self._loop.create_future()
            early = self._unclaimed.pop(pid, None)
            if early is not None:
                future.set_result(early)
            else:
                self._watchers[pid] = future
        return future

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            exit_status = exit_status_from_wait(status)
            future = self._watchers.pop(pid, None)
            if future is None:
                log.debug("reaped unwatched pid %d (status %d)", pid, exit_status.code)
                self._unclaimed[pid] = exit_status
                while len(self._unclaimed) > _UNCLAIMED_LIMIT:
                    self._unclaimed.popitem(last=False)
            elif not future.done():
                future.set_result(exit_status)
