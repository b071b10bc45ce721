"""One task: its bundle, rootfs mount, stdio, instance, exec processes and the state machine that guards it.

The Task service only looks tasks up and calls one method here (or on one of the task's exec
processes, shim/service/exec_process.py); each method asks `task_state` first, so an illegal call fails
with the code containerd expects before anything is touched. Events are published from here, in
the order the README of containerd's runtime v2 demands: create, start, (oom), exit, delete, and
exec-added, exec-started, exit for each exec
(https://github.com/containerd/containerd/blob/main/core/runtime/v2/README.md#events).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from proto.containerd.events import task_pb2 as events
from proto.containerd.types import mount_pb2
from shim.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    RpcError,
    Unimplemented,
)
from shim.kernel.cgroups import Cgroup, uses_systemd_driver
from shim.oci_spec import RuntimeSpec, load_spec
from shim.process.reaper import ExitStatus, Reaper
from shim.process.stdio import TaskStdio, open_task_stdio
from shim.runc.command import runc_root
from shim.runc.instance import NativeInstance
from shim.service.bundle_state import remove_task_state, write_task_state
from shim.service.events import EventPublisher, timestamp_from_ns
from shim.service.exec_process import ExecProcess, check_exec_id, parse_process_spec
from shim.service.instance import Instance
from shim.service.rootfs import MountSpec, mount_rootfs, unmount_all
from shim.service.task_state import TaskEvent, TaskState, next_state
from shim.service.workload import is_native
from shim.wasm.instance import WasmInstance
from shim.wasm.instance_process import InstancePlan
from shim.wasm.sandbox.credentials import Credentials

log = logging.getLogger("shim.service.task")

#: Set by containerd's CRI plugin on every container it creates (containerd internal/cri/annotations).
CRI_IMAGE_NAME_ANNOTATION = "io.kubernetes.cri.image-name"

TERMINAL_UNSUPPORTED = (
    "a terminal was requested (ctr run -t, or tty: true in the pod spec), but this shim runs a "
    "task's own process without one (a Wasm task has no terminal; exec -t into a native container "
    "does get one): run it without -t / tty"
)


@dataclass
class DaemonContext:
    """What every task of this daemon shares."""

    namespace: str
    containerd_address: str
    publisher: EventPublisher
    reaper: Reaper
    cache_dir: Path
    systemd_cgroup: bool = False
    #: Called with the number of tasks (created or being created) whenever it changes: the idle-exit timer.
    on_tasks_changed: Callable[[int], None] = lambda _count: None


@dataclass
class Task:
    id: str
    bundle: Path
    spec: RuntimeSpec
    stdin: str
    stdout: str
    stderr: str
    context: DaemonContext
    instance: Instance
    rootfs_mounted: str | None
    state: TaskState = TaskState.CREATED
    exit_status: ExitStatus | None = None
    started: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    execs: dict[str, ExecProcess] = field(default_factory=dict)
    terminal: bool = False  # Create refuses a terminal for the init process

    # -- create --------------------------------------------------------------------

    @classmethod
    async def create(cls, request: Any, context: DaemonContext, options: dict[str, Any]) -> "Task":
        if request.terminal:
            raise InvalidArgument(TERMINAL_UNSUPPORTED)
        if request.checkpoint:
            raise Unimplemented("restoring a task from a checkpoint is not supported by this shim: it has no "
                                "CRIU support (nor does containerd-shim-spin); run the image afresh instead")
        bundle = Path(request.bundle)
        stdio = await open_task_stdio(request.stdin, request.stdout, request.stderr,
                                      task_id=request.id, namespace=context.namespace)
        rootfs_mounted: str | None = None
        try:
            spec = load_spec(bundle)
            rootfs = _rootfs_dir(bundle, spec)
            if request.rootfs:
                mount_rootfs([MountSpec(m.type, m.source, tuple(m.options))
                              for m in request.rootfs], str(rootfs))
                rootfs_mounted = str(rootfs)
            systemd = uses_systemd_driver(spec.cgroups_path,
                                          bool(options.get("systemd_cgroup", context.systemd_cgroup)))
            cgroup = (Cgroup.from_spec(spec.cgroups_path, systemd=systemd)
                      if spec.cgroups_path else None)
            instance = _new_instance(request.id, bundle, spec, rootfs, stdio, cgroup, context,
                                     systemd=systemd)
            task = cls(id=request.id, bundle=bundle, spec=spec, stdin=request.stdin,
                       stdout=request.stdout, stderr=request.stderr, context=context,
                       instance=instance, rootfs_mounted=rootfs_mounted)
            try:
                await instance.create()
            except BaseException:
                task._release()
                raise
        except (RpcError, OSError) as exc:
            error = exc if isinstance(exc, RpcError) else InvalidArgument(
                f"cannot create task {request.id}: {exc}")
            stdio.write_error(f"spin shim: {error.message}")
            stdio.close()
            if rootfs_mounted:
                _quiet(unmount_all, rootfs_mounted)
            raise error from None
        task.instance.exited.add_done_callback(task._on_exit)
        task._write_state_file(systemd)
        context.publisher.publish("/tasks/create", events.TaskCreate(
            container_id=task.id, bundle=str(bundle),
            rootfs=[mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                                    options=list(m.options)) for m in request.rootfs],
            io=events.TaskIO(stdin=request.stdin, stdout=request.stdout,
                             stderr=request.stderr, terminal=False),
            pid=task.instance.pid,
        ))
        return task

    def _write_state_file(self, systemd: bool) -> None:
        native = isinstance(self.instance, NativeInstance)
        write_task_state(self.bundle, pid=self.instance.pid, cgroups_path=self.spec.cgroups_path,
                         systemd_cgroup=systemd, rootfs=self.rootfs_mounted,
                         runc_root=str(runc_root(self.context.namespace)) if native else None)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.instance.pid

    async def start(self) -> int:
        # No await in here: start is published before the loop can run the reaper.
        self.state = next_state(self.id, self.state, TaskEvent.START)
        self.started = True
        pid = self.instance.start()
        # Published before the loop can run the reaper, so a guest that exits at once
        # still shows start before exit.
        self.context.publisher.publish("/tasks/start", events.TaskStart(container_id=self.id, pid=pid))
        return pid

    def kill(self, sig: int, all_processes: bool) -> None:
        next_state(self.id, self.state, TaskEvent.KILL)
        self.instance.kill(sig, all_processes)

    async def wait(self) -> ExitStatus:
        await self.stopped.wait()
        assert self.exit_status is not None
        return self.exit_status

    def _on_exit(self, future: asyncio.Future[ExitStatus]) -> None:
        status = future.result()
        self.state = next_state(self.id, self.state, TaskEvent.EXITED)
        oom = self.instance.oom_killed()
        self.exit_status = status
        log.info("task %s exited with %d%s", self.id, status.code, " (OOM killed)" if oom else "")
        if oom:
            self.context.publisher.publish("/tasks/oom", events.TaskOOM(container_id=self.id))
        if self.started:
            self.context.publisher.publish("/tasks/exit", events.TaskExit(
                container_id=self.id, id=self.id, pid=self.pid, exit_status=status.code,
                exited_at=timestamp_from_ns(status.exited_at_ns)))
        self.stopped.set()

    async def delete(self) -> ExitStatus | None:
        """Returns the exit status to report, or None for a task that never started."""
        self.state = next_state(self.id, self.state, TaskEvent.DELETE)
        if not self.stopped.is_set():  # CREATED: the instance waits for a Start that won't come
            _quiet(self.instance.kill, signal.SIGKILL, True)
            await self.stopped.wait()
        # An exec can outlive the init when the pod shares one pid namespace; none may outlive the task.
        execs, self.execs = list(self.execs.values()), {}
        await asyncio.gather(*(process.end() for process in execs))
        self._release()
        status = self.exit_status if self.started else None
        self.context.publisher.publish("/tasks/delete", events.TaskDelete(
            container_id=self.id, id=self.id, pid=self.pid,
            exit_status=status.code if status else 0,
            exited_at=timestamp_from_ns(status.exited_at_ns) if status else None))
        return status

    # -- exec processes ------------------------------------------------------------

    def exec(self, request: Any) -> None:
        """Exec: record a process to run in the task (Start runs it), as the runc shim does."""
        if self.instance.exec_refusal is not None:
            raise Unimplemented(self.instance.exec_refusal)
        next_state(self.id, self.state, TaskEvent.EXEC)
        check_exec_id(request.exec_id)
        if request.exec_id in self.execs:
            raise AlreadyExists(f"{self.id}: exec {request.exec_id!r} already exists")
        process = parse_process_spec(request.spec.type_url, request.spec.value)
        self.execs[request.exec_id] = ExecProcess(
            task_id=self.id, exec_id=request.exec_id, process=process, stdin=request.stdin,
            stdout=request.stdout, stderr=request.stderr, terminal=request.terminal,
            runner=self.instance, reaper=self.context.reaper, publisher=self.context.publisher,
            namespace=self.context.namespace)
        self.context.publisher.publish("/tasks/exec-added", events.TaskExecAdded(
            container_id=self.id, exec_id=request.exec_id))

    def exec_process(self, exec_id: str) -> ExecProcess:
        process = self.execs.get(exec_id)
        if process is None:
            raise NotFound(f"exec {exec_id!r} of task {self.id!r} not found")
        return process

    async def delete_exec(self, exec_id: str) -> tuple[ExecProcess, ExitStatus | None]:
        process = self.exec_process(exec_id)
        status = await process.delete()
        self.execs.pop(exec_id, None)
        return process, status

    def exec_ids_by_pid(self) -> dict[int, str]:
        return {process.pid: exec_id for exec_id, process in self.execs.items()
                if process.state is TaskState.RUNNING}

    def _release(self) -> None:
        # Instance first: a native container's processes use the rootfs until runc deletes them.
        for problem in self.instance.release():
            log.warning("task %s: not cleaned up: %s", self.id, problem)
        if self.rootfs_mounted:
            try:
                unmount_all(self.rootfs_mounted)
            except OSError as exc:
                log.warning("task %s: rootfs not unmounted: %s", self.id, exc)
            self.rootfs_mounted = None
        remove_task_state(self.bundle)


def _rootfs_dir(bundle: Path, spec: RuntimeSpec) -> Path:
    root = Path(spec.root_path)
    return root if root.is_absolute() else bundle / root


def _new_instance(task_id: str, bundle: Path, spec: RuntimeSpec, rootfs: Path, stdio: TaskStdio,
                  cgroup: Cgroup | None, context: DaemonContext, *, systemd: bool) -> Instance:
    """runc for the pod's pause container and Linux sidecars, an instance process for Wasm.
    The cgroup object is shared: a Wasm instance creates it, runc creates a native one itself."""
    if is_native(spec, rootfs):
        log.debug("task %s: native container via runc", task_id)
        return NativeInstance(task_id, bundle, context.namespace, stdio, cgroup, context.reaper,
                              systemd_cgroup=systemd)
    log.debug("task %s: Wasm", task_id)
    return WasmInstance(_instance_plan(task_id, spec, rootfs, context), stdio, cgroup, context.reaper)


#: The namespaces a Wasm task's instance process joins or makes; the mount namespace is always its own
#: (shim/wasm/sandbox/root.py). pid, user and cgroup namespaces are not made (README, "Security model").
_WASM_NAMESPACES = ("network", "uts", "ipc")


def _instance_plan(task_id: str, spec: RuntimeSpec, rootfs: Path, context: DaemonContext) -> InstancePlan:
    env = spec.env_dict
    max_memory = env.get("SPIN_MAX_INSTANCE_MEMORY")
    namespaces = {ns.type: ns.path for ns in spec.namespaces if ns.type in _WASM_NAMESPACES}
    return InstancePlan(
        task_id=task_id, rootfs=rootfs, args=list(spec.args), env=env, cwd=spec.cwd,
        credentials=Credentials(
            uid=spec.user.uid, gid=spec.user.gid, additional_gids=spec.user.additional_gids,
            capabilities=spec.capabilities, no_new_privileges=spec.no_new_privileges, rlimits=spec.rlimits,
            umask=spec.umask, seccomp=spec.seccomp),
        namespaces=namespaces, hostname=spec.hostname, mounts=spec.mounts, root_readonly=spec.root_readonly,
        resources=spec.resources, cache_dir=context.cache_dir,
        max_instance_memory=int(max_memory) if max_memory and max_memory.isdigit() else None,
        containerd_address=context.containerd_address, namespace=context.namespace,
        image_name=spec.annotations.get(CRI_IMAGE_NAME_ANNOTATION) or None,
    )


def _quiet(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except (OSError, RpcError):
        pass

