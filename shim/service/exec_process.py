"""One process that `Exec` added to a native task: `kubectl exec`, an exec probe, `ctr task exec`.

This is the runc shim's exec process (containerd pkg/process/exec.go): Exec only records it (and the
Task publishes /tasks/exec-added); Start opens its stdio and has the task's instance run it (`runc
exec --detach`, shim/runc/instance.py), publishes /tasks/exec-started with its pid, and only then
watches that pid, so its /tasks/exit (container_id = the task, id = the exec) can never come first,
even for an `echo` that exits before runc does: the one reaper keeps an exit nobody watched yet
(containerd docs/runtime-v2.md "Events": exec-started before exit). Wait, State, Kill, CloseIO,
ResizePty and Delete act on it by exec id; what is legal when is `task_state.EXEC_TRANSITIONS`. As
in the runc shim, deleting an exec publishes no event; /tasks/delete belongs to the task.

The exec's stdin FIFO is also held open for writing by the daemon until CloseIO (the runc shim's
openStdin): the process reading it must not see EOF before the client has opened its end, only
once the client says it is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from typing import Any, Protocol

from proto.containerd.events import task_pb2 as events
from shim.errors import InvalidArgument, NotFound, RpcError
from shim.process.console import Console, ConsoleSocket
from shim.process.reaper import ExitStatus, Reaper
from shim.process.stdio import TaskStdio, hold_fifo_open_for_writing, open_task_stdio
from shim.service.events import EventPublisher, timestamp_from_ns
from shim.service.task_state import TaskEvent, TaskState, next_exec_state

log = logging.getLogger("shim.exec")

#: containerd's identifier rule (pkg/identifiers): the exec id names files in the bundle.
_EXEC_ID = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_EXEC_ID_MAX = 76
#: What deleting a task waits, per exec it had to SIGKILL, for the reaper to report the exit.
_KILL_WAIT = 5.0


class ExecRunner(Protocol):
    """What an Instance offers when it can run more processes (NativeInstance: `runc exec`)."""

    async def exec(self, exec_id: str, process: dict[str, Any], stdio: TaskStdio,
                   console_socket: str | None) -> int: ...


def check_exec_id(exec_id: str) -> None:
    if not exec_id:
        raise InvalidArgument("exec id is empty")
    if len(exec_id) > _EXEC_ID_MAX or not _EXEC_ID.fullmatch(exec_id):
        raise InvalidArgument(f"exec id {exec_id!r} is not a valid identifier: letters, digits and "
                              f"single '.', '_' or '-' between them, at most {_EXEC_ID_MAX} characters")


def parse_process_spec(type_url: str, value: bytes) -> dict[str, Any]:
    """ExecProcessRequest.spec: an OCI runtime-spec Process, which containerd's typeurl marshals as
    JSON (type URL types.containerd.io/opencontainers/runtime-spec/1/Process). runc gets it as is."""
    if not value:
        raise InvalidArgument("exec spec is empty: an OCI process (args, env, cwd, user) is required")
    try:
        process = json.loads(value)
    except ValueError:
        raise InvalidArgument(f"cannot decode exec spec of type {type_url!r}: not JSON") from None
    if not isinstance(process, dict):
        raise InvalidArgument("exec spec must be an OCI process, a JSON object")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(arg, str) for arg in args):
        raise InvalidArgument("exec spec has no args: nothing to run")
    return process


class ExecProcess:
    """One exec of a task, from Exec to Delete; its state is guarded by `task_state.EXEC_TRANSITIONS`."""

    def __init__(self, *, task_id: str, exec_id: str, process: dict[str, Any], stdin: str, stdout: str,
                 stderr: str, terminal: bool, runner: ExecRunner, reaper: Reaper,
                 publisher: EventPublisher, namespace: str) -> None:
        self.task_id = task_id
        self.id = exec_id
        self.process = process
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.terminal = terminal
        self._runner = runner
        self._reaper = reaper
        self._publisher = publisher
        self._namespace = namespace
        self.state = TaskState.CREATED
        self.pid = 0
        self.exit_status: ExitStatus | None = None
        self.stopped = asyncio.Event()
        self._exited: asyncio.Future[ExitStatus] | None = None
        self._stdin_writer: int | None = None
        self._console: Console | None = None

    def _advance(self, event: TaskEvent) -> TaskState:
        return next_exec_state(self.task_id, self.id, self.state, event)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> int:
        self.state = self._advance(TaskEvent.START)  # STARTING: a second Start or a Delete now is refused
        try:
            pid = await self._run()
        except BaseException as exc:
            self.state = self._advance(TaskEvent.START_FAILED)
            # The runc shim's failed start: Wait returns (status 0, no exit time), Delete works.
            self.exit_status = ExitStatus(0, 0)
            self.stopped.set()
            self._close_stdin()
            if isinstance(exc, RpcError):
                log.info("exec %s in %s did not start: %s", self.id, self.task_id, exc.message)
            raise
        self.pid = pid
        self.state = self._advance(TaskEvent.STARTED)
        self._publisher.publish("/tasks/exec-started", events.TaskExecStarted(
            container_id=self.task_id, exec_id=self.id, pid=pid))
        self._exited = self._reaper.watch(pid)  # its done-callback runs on a later loop turn
        self._exited.add_done_callback(self._on_exit)
        return pid

    async def _run(self) -> int:
        # A terminal has no separate stderr (containerd passes none); its stdout is the copy's.
        stdio = await open_task_stdio(self.stdin, self.stdout, "" if self.terminal else self.stderr,
                                      task_id=self.task_id, namespace=self._namespace)
        try:
            if stdio.stdin is not None:
                self._stdin_writer = hold_fifo_open_for_writing(self.stdin)
            if not self.terminal:
                return await self._runner.exec(self.id, self.process, stdio, None)
            console_socket = ConsoleSocket()
            try:
                pid = await self._runner.exec(self.id, self.process, TaskStdio(), console_socket.path)
                try:
                    master = console_socket.receive_master()
                except BaseException:
                    _kill_quietly(pid)  # it runs, but nobody could ever see its terminal
                    raise
            finally:
                console_socket.close()
            self._console = Console(master, _dup(stdio.stdin), _dup(stdio.stdout))
            return pid
        finally:
            stdio.close()  # the exec'd process (or the console copy) holds its own copies now

    def kill(self, sig: int, all_processes: bool = False) -> None:
        """`all` means nothing for an exec (runc shim): the signal goes to its one process."""
        self._advance(TaskEvent.KILL)
        if self._exited is None or self._exited.done():
            raise NotFound(f"{self.task_id} exec {self.id}: process already finished")
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            raise NotFound(f"{self.task_id} exec {self.id}: process already finished") from None

    async def wait(self) -> ExitStatus:
        await self.stopped.wait()
        assert self.exit_status is not None
        return self.exit_status

    def _on_exit(self, future: asyncio.Future[ExitStatus]) -> None:
        status = future.result()
        if self.state is TaskState.RUNNING:
            self.state = self._advance(TaskEvent.EXITED)
        self.exit_status = status
        log.debug("exec %s in %s exited with %d", self.id, self.task_id, status.code)
        self._publisher.publish("/tasks/exit", events.TaskExit(
            container_id=self.task_id, id=self.id, pid=self.pid, exit_status=status.code,
            exited_at=timestamp_from_ns(status.exited_at_ns)))
        self.stopped.set()

    def close_stdin(self) -> None:
        """CloseIO: the client is done writing; the process sees EOF once the client's end closes too."""
        self._close_stdin()

    def resize(self, width: int, height: int) -> None:
        """ResizePty; a no-op without a terminal, as in the runc shim."""
        if self._console is not None:
            self._console.resize(width, height)

    async def delete(self) -> ExitStatus | None:
        """Returns the exit status to report, or None for an exec that never started."""
        self.state = self._advance(TaskEvent.DELETE)
        await self.release()
        return self.exit_status if self.pid else None

    async def end(self) -> None:
        """The task is being deleted: SIGKILL the exec if it still runs, wait (bounded) for the
        reaper to report it, and release its stdio. runc delete --force, which follows, kills
        whatever is left in the container's cgroup."""
        if self.state is TaskState.RUNNING and self._exited is not None and not self._exited.done():
            _kill_quietly(self.pid)
            try:
                await asyncio.wait_for(self.stopped.wait(), _KILL_WAIT)
            except asyncio.TimeoutError:
                log.warning("exec %s in %s: no exit %.0f s after SIGKILL", self.id, self.task_id, _KILL_WAIT)
        await self.release()

    async def release(self) -> None:
        self._close_stdin()
        if self._console is not None:
            console, self._console = self._console, None
            await console.close()

    def _close_stdin(self) -> None:
        if self._stdin_writer is not None:
            try:
                os.close(self._stdin_writer)
            except OSError:
                pass
            self._stdin_writer = None


def _dup(fd: int | None) -> int | None:
    return os.dup(fd) if fd is not None else None  # non-inheritable, as every fd Python makes


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
