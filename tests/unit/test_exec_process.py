"""Exec processes of a task without containerd or runc: the runner is a stand-in that spawns the exec's command as a
child of this process (as `runc exec --detach` leaves it a child of the daemon), the reaper is the daemon's, and the
events are recorded. What is pinned: the runc shim's exec lifecycle and messages, exec-started before the exit even
for a process that exited before runc returned, the stdin held open until CloseIO, and that deleting a task ends its
execs. runc itself is exercised by tests/e2e/test_native_exec.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from google.protobuf import any_pb2

from proto.containerd.task.v2 import shim_pb2
from shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from shim.process.reaper import ExitStatus, Reaper
from shim.process.stdio import TaskStdio
from shim.service.exec_process import ExecProcess, parse_process_spec
from shim.service.task import DaemonContext, Task
from shim.service.task_state import TaskState
from shim.wasm.instance import WASM_EXEC_REFUSAL

PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"


class Events:
    """An EventPublisher that records (topic, event)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []

    def publish(self, topic: str, event: Any) -> None:
        self.published.append((topic, event))

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.published]


class SpawningRunner:
    """Runs the exec's args as a direct child with the exec's stdio, as runc exec --detach leaves it."""

    exec_refusal: str | None = None

    def __init__(self, reaper: Reaper, *, exit_before_returning: bool = False,
                 failure: Exception | None = None) -> None:
        self._reaper = reaper
        self._exit_before_returning = exit_before_returning
        self._failure = failure
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []

    async def exec(self, exec_id: str, process: dict[str, Any], stdio: TaskStdio,
                   console_socket: str | None) -> int:
        self.calls.append((exec_id, process, console_socket))
        if self._failure is not None:
            raise self._failure
        actions: list[tuple] = []
        for target, source in enumerate((stdio.stdin, stdio.stdout, stdio.stderr)):
            if source is None:
                actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0))
            else:
                actions.append((os.POSIX_SPAWN_DUP2, source, target))
        args = process["args"]
        pid = os.posix_spawn(args[0], args, {"PATH": "/usr/bin:/bin"}, file_actions=actions)
        if self._exit_before_returning:
            # The exit is collected before anyone watches the pid: the reaper must keep it.
            _wait_zombie(pid)
            self._reaper.reap()
        return pid


def _wait_zombie(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.01)
    raise AssertionError(f"{pid} did not exit")


def run(body: Callable[[Reaper, Events], Awaitable[Any]], events: Events | None = None) -> Any:
    """Run `body` on a loop whose reaper handles SIGCHLD, as in the daemon."""
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        reaper = Reaper(loop)
        reaper.install()
        try:
            return await asyncio.wait_for(body(reaper, events or Events()), 20)
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

    return asyncio.run(main())


def fifo(tmp_path: Path, name: str) -> tuple[str, int]:
    """A FIFO with its reading end opened, as ctr and CRI open theirs before Exec."""
    path = tmp_path / name
    os.mkfifo(path)
    return str(path), os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, True)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def new_exec(runner: SpawningRunner, reaper: Reaper, events: Events, args: list[str], *, stdin: str = "",
             stdout: str = "", stderr: str = "") -> ExecProcess:
    return ExecProcess(task_id="t1", exec_id="e1", process={"args": args}, stdin=stdin, stdout=stdout,
                       stderr=stderr, terminal=False, runner=runner, reaper=reaper,
                       publisher=events, namespace="k8s.io")  # type: ignore[arg-type]


# -- one exec process ---------------------------------------------------------------------------------------------

def test_exec_started_comes_before_the_exit_even_when_the_process_exited_before_runc_returned(tmp_path):
    stdout, out_r = fifo(tmp_path, "out")

    async def body(reaper: Reaper, events: Events) -> tuple[int, ExitStatus]:
        runner = SpawningRunner(reaper, exit_before_returning=True)
        process = new_exec(runner, reaper, events, ["/bin/sh", "-c", "echo hello"], stdout=stdout)
        pid = await process.start()
        return pid, await process.wait()

    events = Events()
    pid, status = run(body, events)
    assert status.code == 0
    assert read_all(out_r) == b"hello\n"
    assert events.topics() == ["/tasks/exec-started", "/tasks/exit"]
    started, exited = (event for _, event in events.published)
    assert (started.container_id, started.exec_id, started.pid) == ("t1", "e1", pid)
    assert (exited.container_id, exited.id, exited.pid, exited.exit_status) == ("t1", "e1", pid, 0)


def test_exit_status_and_stderr_of_a_failing_command(tmp_path):
    stderr, err_r = fifo(tmp_path, "err")

    async def body(reaper: Reaper, events: Events) -> tuple[ExitStatus, ExitStatus | None, ExecProcess]:
        process = new_exec(SpawningRunner(reaper), reaper, events, ["/bin/sh", "-c", "echo err >&2; exit 3"],
                           stderr=stderr)
        await process.start()
        status = await process.wait()
        return status, await process.delete(), process

    status, deleted, process = run(body)
    assert status.code == 3 and deleted == status
    assert process.state is TaskState.DELETED
    assert read_all(err_r) == b"err\n"


def test_kill_signals_the_running_exec_and_a_second_kill_is_not_found(tmp_path):
    async def body(reaper: Reaper, events: Events) -> ExitStatus:
        process = new_exec(SpawningRunner(reaper), reaper, events, ["/bin/sleep", "30"])
        await process.start()
        with pytest.raises(FailedPrecondition, match="cannot delete a running process"):
            await process.delete()
        process.kill(signal.SIGKILL, True)
        status = await process.wait()
        with pytest.raises(NotFound, match="process already finished"):
            process.kill(signal.SIGKILL)
        return status

    assert run(body).code == 128 + signal.SIGKILL


def test_kill_before_start_is_failed_precondition(tmp_path):
    async def body(reaper: Reaper, events: Events) -> None:
        process = new_exec(SpawningRunner(reaper), reaper, events, ["/bin/true"])
        with pytest.raises(FailedPrecondition, match="t1 exec e1: process not created"):
            process.kill(signal.SIGTERM)

    run(body)


def test_a_failed_start_releases_a_pending_wait_and_can_be_deleted(tmp_path):
    async def body(reaper: Reaper, events: Events) -> tuple[ExitStatus, ExitStatus | None]:
        failure = InvalidArgument("runc exec failed: exec: \"nope\": executable file not found in $PATH")
        process = new_exec(SpawningRunner(reaper, failure=failure), reaper, events, ["nope"])
        waiter = asyncio.ensure_future(process.wait())  # CRI waits before it starts
        with pytest.raises(InvalidArgument, match="executable file not found"):
            await process.start()
        status = await asyncio.wait_for(waiter, 2)
        assert process.state is TaskState.STOPPED
        with pytest.raises(FailedPrecondition, match="cannot start a stopped process"):
            await process.start()
        return status, await process.delete()

    events = Events()
    status, deleted = run(body, events)
    assert status.code == 0 and deleted is None  # the runc shim's answer for an exec that never ran
    assert events.published == []


def test_stdin_stays_open_until_close_io_then_the_process_sees_eof(tmp_path):
    stdin = tmp_path / "in"
    os.mkfifo(stdin)
    stdout, out_r = fifo(tmp_path, "out")

    async def body(reaper: Reaper, events: Events) -> ExitStatus:
        process = new_exec(SpawningRunner(reaper), reaper, events, ["/bin/cat"], stdin=str(stdin), stdout=stdout)
        await process.start()
        writer = os.open(stdin, os.O_WRONLY)  # the client's end, opened after Start as containerd/fifo may
        os.write(writer, b"typed\n")
        os.close(writer)
        await asyncio.sleep(0.3)
        assert not process.stopped.is_set(), "cat saw EOF although CloseIO was not called"
        process.close_stdin()
        return await asyncio.wait_for(process.wait(), 5)

    assert run(body).code == 0
    assert read_all(out_r) == b"typed\n"


@pytest.mark.parametrize("value, message", [
    (b"", "exec spec is empty"),
    (b"{not json", "not JSON"),
    (b"[]", "must be an OCI process"),
    (json.dumps({"args": []}).encode(), "has no args"),
    (json.dumps({"cwd": "/"}).encode(), "has no args"),
])
def test_malformed_exec_specs_are_invalid_argument(value, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_process_spec(PROCESS_TYPE, value)


def test_the_spec_reaches_runc_unchanged():
    process = {"args": ["sh"], "env": ["A=1"], "cwd": "/tmp", "terminal": False, "user": {"uid": 1, "gid": 2},
               "capabilities": {"bounding": ["CAP_KILL"]}}
    assert parse_process_spec(PROCESS_TYPE, json.dumps(process).encode()) == process


# -- through the task -------------------------------------------------------------------------------------------

class FakeInstance:
    """Just enough of an Instance for Task.exec and Task.delete."""

    def __init__(self, runner: SpawningRunner | None) -> None:
        self._runner = runner
        self.exec_refusal = WASM_EXEC_REFUSAL if runner is None else None
        self.pid = 100
        self.released = False

    async def exec(self, *args: Any) -> int:
        assert self._runner is not None
        return await self._runner.exec(*args)

    def release(self) -> list[str]:
        self.released = True
        return []


def new_task(tmp_path: Path, reaper: Reaper, events: Events, instance: FakeInstance,
             state: TaskState = TaskState.RUNNING) -> Task:
    context = DaemonContext(namespace="k8s.io", containerd_address="", publisher=events,  # type: ignore[arg-type]
                            reaper=reaper, cache_dir=tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    return Task(id="t1", bundle=bundle, spec=None, stdin="", stdout="", stderr="", context=context,  # type: ignore[arg-type]
                instance=instance, rootfs_mounted=None, state=state, started=True)  # type: ignore[arg-type]


def exec_request(exec_id: str, args: list[str] | None = None, **fields: Any) -> shim_pb2.ExecProcessRequest:
    spec = any_pb2.Any(type_url=PROCESS_TYPE, value=json.dumps({"args": args or ["/bin/true"]}).encode())
    return shim_pb2.ExecProcessRequest(id="t1", exec_id=exec_id, spec=spec, **fields)


def test_exec_of_a_wasm_task_is_unimplemented_with_the_reason(tmp_path):
    async def body(reaper: Reaper, events: Events) -> None:
        task = new_task(tmp_path, reaper, events, FakeInstance(None))
        with pytest.raises(Unimplemented) as refused:
            task.exec(shim_pb2.ExecProcessRequest(id="t1", exec_id="e1"))  # no spec: refused before parsing
        assert refused.value.message == WASM_EXEC_REFUSAL
        assert "Wasm" in refused.value.message and "httpGet" in refused.value.message
        assert events.published == [] and task.execs == {}

    run(body)


def test_exec_ids_are_unique_per_task_and_validated(tmp_path):
    async def body(reaper: Reaper, events: Events) -> None:
        task = new_task(tmp_path, reaper, events, FakeInstance(SpawningRunner(reaper)))
        task.exec(exec_request("probe-1"))
        assert events.topics() == ["/tasks/exec-added"]
        assert (events.published[0][1].container_id, events.published[0][1].exec_id) == ("t1", "probe-1")
        with pytest.raises(AlreadyExists, match="probe-1"):
            task.exec(exec_request("probe-1"))
        for bad in ("../escape", "a b", "", "x" * 77, "-lead"):
            with pytest.raises(InvalidArgument, match="exec id"):
                task.exec(exec_request(bad))
        with pytest.raises(NotFound, match="exec 'nope' of task 't1' not found"):
            task.exec_process("nope")

    run(body)


def test_exec_into_a_stopped_task_is_refused(tmp_path):
    async def body(reaper: Reaper, events: Events) -> None:
        task = new_task(tmp_path, reaper, events, FakeInstance(SpawningRunner(reaper)), state=TaskState.STOPPED)
        with pytest.raises(FailedPrecondition, match="cannot exec in a stopped task"):
            task.exec(exec_request("e1"))

    run(body)


def test_deleting_the_task_kills_and_reaps_its_running_execs(tmp_path):
    async def body(reaper: Reaper, events: Events) -> tuple[Task, ExecProcess, ExecProcess]:
        instance = FakeInstance(SpawningRunner(reaper))
        task = new_task(tmp_path, reaper, events, instance, state=TaskState.STOPPED)
        task.stopped.set()
        task.state = TaskState.RUNNING
        task.exec(exec_request("sleeper", ["/bin/sleep", "30"]))
        task.exec(exec_request("never-started"))
        sleeper, never_started = task.exec_process("sleeper"), task.exec_process("never-started")
        await sleeper.start()
        task.state = TaskState.STOPPED  # the init exited; an exec of a shared pid namespace did not
        task.exit_status = ExitStatus(0, time.time_ns())
        await task.delete()
        assert instance.released
        return task, sleeper, never_started

    events = Events()
    task, sleeper, never_started = run(body, events)
    assert task.execs == {}
    assert sleeper.exit_status is not None and sleeper.exit_status.code == 128 + signal.SIGKILL
    assert never_started.exit_status is None
    assert events.topics() == ["/tasks/exec-added", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit",
                               "/tasks/delete"]


def test_delete_of_an_exec_removes_it_and_publishes_nothing(tmp_path):
    async def body(reaper: Reaper, events: Events) -> Task:
        task = new_task(tmp_path, reaper, events, FakeInstance(SpawningRunner(reaper)))
        task.exec(exec_request("e1", ["/bin/sh", "-c", "exit 7"]))
        await task.exec_process("e1").start()
        await task.exec_process("e1").wait()
        process, status = await task.delete_exec("e1")
        assert status is not None and status.code == 7 and process.id == "e1"
        return task

    events = Events()
    task = run(body, events)
    assert task.execs == {}
    assert events.topics() == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
