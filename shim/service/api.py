"""The Task service containerd calls: `containerd.task.v2.Task`, and the identical v3.

Each method looks the process up (the task's init, or one of its exec processes when the
request names an exec id), calls one method on it and answers, like the Go runc shim's service
(STYLE.md). Unknown ids are NOT_FOUND; what a task cannot do is UNIMPLEMENTED with a sentence
saying why and what to do instead: containerd passes the status message through, so it is the
whole of what `ctr` prints ("ctr: <sentence>: not implemented"). The v3 service
(containerd/api runtime/task/v3/shim.proto) is byte-identical to v2 but for its package name, so
the same handlers serve both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Callable

from google.protobuf import any_pb2, empty_pb2

from proto.containerd.runc.v1 import oci_pb2 as runc_pb2
from proto.containerd.task.v2 import shim_pb2
from proto.containerd.types.task import task_pb2
from shim.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from shim.service.events import timestamp_from_ns
from shim.service.exec_process import ExecProcess
from shim.service.options import parse_task_options
from shim.service.task import DaemonContext, Task
from shim.service.task_state import TaskState
from shim.ttrpc.server import CallContext, Method

log = logging.getLogger("shim.service.api")

TASK_SERVICES = ("containerd.task.v2.Task", "containerd.task.v3.Task")

_STATUS = {
    TaskState.CREATED: task_pb2.CREATED,
    TaskState.STARTING: task_pb2.CREATED,  # as the runc shim reports an exec until runc returns
    TaskState.RUNNING: task_pb2.RUNNING,
    TaskState.STOPPED: task_pb2.STOPPED,
    TaskState.DELETED: task_pb2.STOPPED,
}

#: runwasi, hence containerd-shim-spin, implements none of these. Kubernetes never pauses a container (CRI has no
#: pause); the kubelet's checkpoint API (feature ContainerCheckpoint) does reach Checkpoint, which runc answers
#: with CRIU, not used here. Freezing would have to cover the instance process and its forked HTTP workers (the
#: task's cgroup, which the daemon is not in) and Kill/Delete of a frozen task would have to thaw it; none of that
#: is built, so the refusal leaves the task exactly as it was.
_UNSUPPORTED = {
    "Pause": ("pausing a task is not supported by this shim: it does not freeze a task's cgroup (nor does "
              "containerd-shim-spin, and Kubernetes never pauses a container), so the task keeps running; "
              "stop it with `ctr task kill` instead"),
    "Resume": ("resuming a task is not supported by this shim: it never pauses a task (Pause is refused too), "
               "so there is nothing to resume and the task is as it was"),
    "Checkpoint": ("checkpointing a task is not supported by this shim: it has no CRIU support (nor does "
                   "containerd-shim-spin), so the task keeps running; stop it and run the image again instead"),
}
#: containerd's type URL for the runc shim's per-process detail in Pids (ctr task ps shows the exec id).
_PROCESS_DETAILS_TYPE = "containerd.runc.v1.ProcessDetails"


class TaskService:
    def __init__(self, context: DaemonContext, request_shutdown: Callable[[], None]) -> None:
        self._context = context
        self._request_shutdown = request_shutdown
        self.tasks: dict[str, Task] = {}
        self._creating: set[str] = set()

    def _get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFound(f"task {task_id!r} not found")
        return task

    def _process(self, task_id: str, exec_id: str) -> Task | ExecProcess:
        """The task's init process, or the exec process `exec_id` names."""
        task = self._get(task_id)
        return task.exec_process(exec_id) if exec_id else task

    # -- lifecycle -----------------------------------------------------------------

    async def create(self, request: Any, ctx: CallContext) -> Any:
        if not request.id:
            raise InvalidArgument("task id is empty")
        if request.id in self.tasks or request.id in self._creating:
            raise AlreadyExists(f"task {request.id!r} already exists")
        self._creating.add(request.id)
        self._context.on_tasks_changed(self.task_count)
        try:
            options = parse_task_options(request.options)
            task = await Task.create(request, self._context, options)
            self.tasks[request.id] = task
        finally:
            self._creating.discard(request.id)
            self._context.on_tasks_changed(self.task_count)
        return shim_pb2.CreateTaskResponse(pid=task.pid)

    @property
    def task_count(self) -> int:
        """Tasks this daemon holds, counting those being created (a cold compile can take many seconds)."""
        return len(self.tasks) + len(self._creating)

    async def start(self, request: Any, ctx: CallContext) -> Any:
        process = self._process(request.id, request.exec_id)
        return shim_pb2.StartResponse(pid=await process.start())

    async def state(self, request: Any, ctx: CallContext) -> Any:
        task = self._get(request.id)
        process = self._process(request.id, request.exec_id)
        response = shim_pb2.StateResponse(
            id=process.id, bundle=str(task.bundle), pid=process.pid, status=_STATUS[process.state],
            stdin=process.stdin, stdout=process.stdout, stderr=process.stderr,
            terminal=process.terminal, exec_id=request.exec_id,
        )
        if process.exit_status is not None:
            response.exit_status = process.exit_status.code
            if process.exit_status.exited_at_ns:
                response.exited_at.CopyFrom(timestamp_from_ns(process.exit_status.exited_at_ns))
        return response

    async def wait(self, request: Any, ctx: CallContext) -> Any:
        process = self._process(request.id, request.exec_id)
        status = await process.wait()
        return shim_pb2.WaitResponse(exit_status=status.code,
                                     exited_at=timestamp_from_ns(status.exited_at_ns))

    async def kill(self, request: Any, ctx: CallContext) -> Any:
        process = self._process(request.id, request.exec_id)
        process.kill(request.signal, request.all)
        return empty_pb2.Empty()

    async def delete(self, request: Any, ctx: CallContext) -> Any:
        task = self._get(request.id)
        if request.exec_id:  # no event: /tasks/delete is the task's (runc shim)
            process, status = await task.delete_exec(request.exec_id)
            pid = process.pid
        else:
            status = await task.delete()
            pid = task.pid
            self.tasks.pop(task.id, None)
            self._context.on_tasks_changed(self.task_count)
        response = shim_pb2.DeleteResponse(pid=pid)
        if status is not None:
            response.exit_status = status.code
            response.exited_at.CopyFrom(timestamp_from_ns(status.exited_at_ns))
        return response

    async def exec(self, request: Any, ctx: CallContext) -> Any:
        self._get(request.id).exec(request)
        return empty_pb2.Empty()

    # -- observation ---------------------------------------------------------------

    async def pids(self, request: Any, ctx: CallContext) -> Any:
        task = self._get(request.id)
        exec_ids = task.exec_ids_by_pid()
        processes = []
        for pid in task.instance.pids():
            info = task_pb2.ProcessInfo(pid=pid)
            if pid in exec_ids:
                details = runc_pb2.ProcessDetails(exec_id=exec_ids[pid])
                info.info.CopyFrom(any_pb2.Any(type_url=_PROCESS_DETAILS_TYPE,
                                               value=details.SerializeToString()))
            processes.append(info)
        return shim_pb2.PidsResponse(processes=processes)

    async def stats(self, request: Any, ctx: CallContext) -> Any:
        task = self._get(request.id)
        type_url, value = task.instance.stats()
        return shim_pb2.StatsResponse(stats=any_pb2.Any(type_url=type_url, value=value))

    async def update(self, request: Any, ctx: CallContext) -> Any:
        task = self._get(request.id)
        resources = _decode_resources(request.resources)
        task.instance.update(resources)
        return empty_pb2.Empty()

    async def connect(self, request: Any, ctx: CallContext) -> Any:
        task = self._get(request.id)
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=task.pid)

    async def close_io(self, request: Any, ctx: CallContext) -> Any:
        process = self._process(request.id, request.exec_id)
        # A task's own process reads its stdin FIFO itself and sees EOF once the client closes
        # its end; an exec's stdin is also held open by the daemon until now.
        if isinstance(process, ExecProcess) and request.stdin:
            process.close_stdin()
        return empty_pb2.Empty()

    async def resize_pty(self, request: Any, ctx: CallContext) -> Any:
        process = self._process(request.id, request.exec_id)
        if not isinstance(process, ExecProcess):
            raise Unimplemented(f"{request.id}: the task has no terminal to resize (it was created without one)")
        process.resize(request.width, request.height)
        return empty_pb2.Empty()

    async def shutdown(self, request: Any, ctx: CallContext) -> Any:
        # A grouped shim serves a whole pod: containerd sends Shutdown after deleting each
        # task, and it must be ignored while any task remains (the Go runc shim returns early
        # while it holds containers: containerd cmd/containerd-shim-runc-v2/task/service.go).
        if self.tasks or self._creating:
            log.debug("shutdown ignored: %d task(s) remain", len(self.tasks))
        else:
            asyncio.get_running_loop().call_soon(self._request_shutdown)
        return empty_pb2.Empty()

    # -- registry ------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        m = shim_pb2
        pairs: dict[str, tuple[type, Callable[..., Any]]] = {
            "Create": (m.CreateTaskRequest, self.create),
            "Start": (m.StartRequest, self.start),
            "State": (m.StateRequest, self.state),
            "Wait": (m.WaitRequest, self.wait),
            "Kill": (m.KillRequest, self.kill),
            "Delete": (m.DeleteRequest, self.delete),
            "Pids": (m.PidsRequest, self.pids),
            "Stats": (m.StatsRequest, self.stats),
            "Update": (m.UpdateTaskRequest, self.update),
            "Connect": (m.ConnectRequest, self.connect),
            "CloseIO": (m.CloseIORequest, self.close_io),
            "Exec": (m.ExecProcessRequest, self.exec),
            "ResizePty": (m.ResizePtyRequest, self.resize_pty),
            "Shutdown": (m.ShutdownRequest, self.shutdown),
        }
        requests = {"Pause": m.PauseRequest, "Resume": m.ResumeRequest,
                    "Checkpoint": m.CheckpointTaskRequest}
        for name, request_class in requests.items():
            pairs[name] = (request_class, _unsupported(_UNSUPPORTED[name]))
        return {name: Method(request_class, handler) for name, (request_class, handler) in pairs.items()}


def _unsupported(message: str) -> Callable[..., Any]:
    async def handler(request: Any, ctx: CallContext) -> Any:
        raise Unimplemented(message)

    return handler


def _decode_resources(resources: Any) -> dict[str, Any]:
    """containerd sends specs.LinuxResources through typeurl, which marshals a non-proto
    Go struct as JSON (type URL types.containerd.io/opencontainers/runtime-spec/1/LinuxResources)."""
    if not resources.value:
        return {}
    try:
        decoded = json.loads(resources.value)
    except ValueError:
        raise InvalidArgument(f"cannot decode resources of type {resources.type_url!r}") from None
    if not isinstance(decoded, dict):
        raise InvalidArgument("resources must be a JSON object")
    return decoded
