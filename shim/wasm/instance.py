"""A Wasm task's Instance: the instance process forked from the daemon, and what the Task service asks of it.

One instance process per task, forked from the daemon at Create and told to serve at Start; it satisfies the
Task service's `Instance` (shim.service.instance) by shape.

Why fork at Create and not at Start: the instance process loads (and on a cache miss
compiles) the app at Create, so a broken spin.toml, a corrupt wasm or an unknown trigger
fails `ctr run` / CreateContainer with a clear message, and Start only has to send one
byte. It also gives Create a real pid living in the task's cgroup and network namespace,
which is what containerd and CRI expect of a created task (containerd's tasks.Create
answers with the pid Connect reports: plugins/services/tasks/local.go,
core/runtime/v2/shim.go PID).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

from shim.errors import Internal, InvalidArgument, NotFound, Unimplemented
from shim.kernel.cgroups import Cgroup, cgroup_pids, cgroup_stats
from shim.process.pipes import PipeOverflow, read_until_eof
from shim.process.reaper import ExitStatus, Reaper
from shim.process.stdio import TaskStdio
from shim.wasm.instance_process import InstancePlan, run_instance_process

log = logging.getLogger("shim.wasm.instance")

#: Bytes of the instance process's one status message the daemon reads at most (shim.process.pipes). A report is
#: a few kB: its error is cut to shim.wasm.instance_process.MAX_ERROR_CHARS.
MAX_STATUS_REPORT = 1 << 20


#: Why Exec (kubectl exec, exec probes) is refused for a Wasm task; native tasks run it with runc.
WASM_EXEC_REFUSAL = (
    "exec is not supported for Wasm tasks: a Wasm guest has no shell or processes to exec into "
    "(use an httpGet probe on /.well-known/spin/health instead of an exec probe)")


class WasmInstance:
    """A Wasm task: one instance process, a child of the daemon, in the task's cgroup."""

    exec_refusal: str | None = WASM_EXEC_REFUSAL

    def __init__(self, plan: InstancePlan, stdio: TaskStdio, cgroup: Cgroup | None,
                 reaper: Reaper) -> None:
        self._plan = plan
        self._stdio = stdio
        self._cgroup = cgroup
        self._reaper = reaper
        self._go_w: int | None = None
        self._oom_count_at_start = 0
        self.pid = 0
        self.exited: asyncio.Future[ExitStatus]  # the reaper's, set at fork

    async def create(self) -> int:
        if self._cgroup is not None:
            self._cgroup.create()
            self._cgroup.apply(self._plan.resources)
            self._oom_count_at_start = self._cgroup.oom_kill_count()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the instance process; never returns
            run_instance_process(self._plan, self._stdio, self._cgroup, status_w, go_r)
        self.exited = self._reaper.watch(pid)  # before the loop can handle a SIGCHLD
        self.pid = pid
        os.close(status_w)
        os.close(go_r)
        self._go_w = go_w
        self._stdio.close()  # the instance process holds its own copies now
        overflow = False
        try:
            report = await read_until_eof(status_r, MAX_STATUS_REPORT)
        except PipeOverflow:
            report, overflow = b"", True  # not a report: the instance process is aborted below
        finally:
            os.close(status_r)
        try:
            message = json.loads(report) if report else None
        except ValueError:
            message = None
        if not isinstance(message, dict) or not message.get("ready"):
            await self._abort()
            if overflow:
                raise Internal(f"instance process sent a status report over {MAX_STATUS_REPORT} bytes; stopped it")
            if isinstance(message, dict) and message.get("error"):
                error_class = InvalidArgument if message.get("user_error") else Internal
                raise error_class(message["error"])
            status = self.exited.result() if self.exited.done() else None
            raise Internal(f"instance process exited during create"
                           f"{f' with status {status.code}' if status else ''}")
        log.debug("instance %s ready as pid %d (%s)", self._plan.task_id, pid, message.get("phases", ""))
        for line in message.get("loads") or ():
            log.info("task %s: %s", self._plan.task_id, line)
        for line in message.get("sandbox") or ():
            log.debug("task %s: sandbox: %s", self._plan.task_id, line)
        return pid

    async def _abort(self) -> None:
        if self._go_w is not None:
            os.close(self._go_w)
            self._go_w = None
        if not self.exited.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await asyncio.shield(self.exited)

    def start(self) -> int:
        if self._go_w is None:
            raise Internal(f"{self._plan.task_id}: instance process is not waiting to start")
        try:
            os.write(self._go_w, b"s")
        except BrokenPipeError:
            pass  # it died meanwhile; the reaper reports the exit
        finally:
            os.close(self._go_w)
            self._go_w = None
        return self.pid

    def kill(self, sig: int, all_processes: bool) -> None:
        targets = {self.pid}
        if all_processes and self._cgroup is not None:
            targets.update(self._cgroup.procs())
        delivered = False
        for pid in targets:
            try:
                os.kill(pid, sig)
                delivered = True
            except ProcessLookupError:
                continue
        if not delivered:
            raise NotFound(f"{self._plan.task_id}: process already finished")

    def pids(self) -> list[int]:
        return cgroup_pids(self._cgroup, self.pid, self.exited)

    async def exec(self, exec_id: str, process: dict[str, Any], stdio: TaskStdio,
                   console_socket: str | None) -> int:
        raise Unimplemented(WASM_EXEC_REFUSAL)

    def stats(self) -> tuple[str, bytes]:
        return cgroup_stats(self._cgroup, self._plan.task_id)

    def update(self, resources: dict) -> None:
        if self._cgroup is None:
            raise NotFound(f"{self._plan.task_id}: task has no cgroup to update")
        self._cgroup.apply(resources)

    def oom_killed(self) -> bool:
        return self._cgroup is not None and self._cgroup.oom_kill_count() > self._oom_count_at_start

    def release(self) -> list[str]:
        if self._go_w is not None:
            os.close(self._go_w)
            self._go_w = None
        self._stdio.close()
        return self._cgroup.remove() if self._cgroup is not None else []
