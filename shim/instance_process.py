"""What runs inside a Wasm task's instance process, from fork to exit.

Order matters and is the point of this module:
1. leave the daemon's world: own process group, die with the daemon (a task without its
   shim is unmanaged; containerd runs `delete` for it anyway), default signal handlers;
2. enter the task's network namespace (so ports, probes and sidecars behave as for a
   container) and its stdio;
3. load the app with the runtime (parse, compile or load precompiled) while still
   privileged, since the cache is root's;
4. join the task's cgroup, so that everything the app allocates from here on (the
   guests' memory, the HTTP workers forked later) is accounted and limited; report ready
   or a user-facing error. The load stays outside the limit on purpose: a cold compile
   of a large component can take several times the memory the app will ever use, it is
   the node's work (the blob is shared by every pod of the image) rather than the app's,
   and runwasi and containerd-shim-spin compile in the shim, outside the container's
   cgroup, too. Inside the limit, a pod that runs in 256 MiB once warm would be
   OOM-killed at its first start on every new node;
5. drop to the spec's user and capabilities, wait for Start, run, exit with the guest's
   code. SIGTERM interrupts a command guest at its next epoch check; an http app (bound
   to its port in step 3) forks its worker processes here and drains them on SIGTERM.

Nothing here returns: the process ends with os._exit, never by unwinding into the
daemon's asyncio code it was forked from.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from shim import linux

if TYPE_CHECKING:
    from shim.cgroups import Cgroup
    from shim.stdio import TaskStdio

# Exit code of an instance process that failed before its guest ran; never reported to
# users as a guest exit (Create fails instead), only visible in logs.
_SETUP_FAILED = 125


@dataclass
class InstancePlan:
    """Everything the instance process needs, computed by the daemon before fork."""

    task_id: str
    rootfs: Path
    args: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    additional_gids: list[int]
    no_new_privileges: bool
    capabilities: dict[str, tuple[str, ...]]
    netns_path: str | None
    new_netns: bool
    resources: dict[str, Any]
    cache_dir: Path
    max_instance_memory: int | None = None
    #: Where the instance process asks containerd for the container's image when the rootfs holds no app
    #: (a Spin OCI artifact: its layers are in containerd's content store, not in the rootfs).
    containerd_address: str = ""
    namespace: str = "default"
    #: The image name CRI writes into the spec (io.kubernetes.cri.image-name); saves a Containers/Get round trip.
    image_name: str | None = None
    daemon_pid: int = field(default_factory=os.getpid)


def run_instance_process(plan: InstancePlan, stdio: "TaskStdio", cgroup: "Cgroup | None",
                         status_w: int, go_r: int) -> NoReturn:
    code = _SETUP_FAILED
    try:
        _leave_daemon(plan)
        _install_stdio(stdio)
        _close_inherited_fds(keep={0, 1, 2, status_w, go_r})
        app = _prepare(plan, cgroup, status_w)
        if app is None:
            os._exit(_SETUP_FAILED)
        code = _wait_and_run(plan, app, go_r)
    except BaseException:  # noqa: BLE001 - the process must end here, whatever happened
        try:
            os.write(2, f"spin shim: instance {plan.task_id} failed:\n{traceback.format_exc()}"
                     .encode("utf-8", "replace"))
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(code)


def _leave_daemon(plan: InstancePlan) -> None:
    os.setpgid(0, 0)
    linux.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != plan.daemon_pid:  # the daemon died before PDEATHSIG was armed
        os._exit(_SETUP_FAILED)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        linux.set_process_name(f"spin-{plan.task_id}"[:15])
    except OSError:
        pass


def _install_stdio(stdio: "TaskStdio") -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for target, source in ((0, stdio.stdin), (1, stdio.stdout), (2, stdio.stderr)):
        os.dup2(source if source is not None else devnull, target)
    os.close(devnull)
    # Python-level streams of the forked daemon point at the old fds' buffers; rebind.
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)


def _close_inherited_fds(keep: set[int]) -> None:
    """The daemon's sockets, epoll fd and other tasks' pipes must not leak into a task."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _enter_namespaces(plan: InstancePlan) -> None:
    if plan.netns_path:
        fd = os.open(plan.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, linux.CLONE_NEWNET)
        finally:
            os.close(fd)
    elif plan.new_netns:
        linux.unshare(linux.CLONE_NEWNET)
        linux.bring_loopback_up()


def _report(status_w: int, message: dict[str, Any]) -> None:
    os.write(status_w, json.dumps(message).encode())
    os.close(status_w)


def _prepare(plan: InstancePlan, cgroup: "Cgroup | None", status_w: int) -> Any:
    """Set up and load; on failure tell the daemon (-> the Create error) and the user
    (-> the task's stderr) and return None."""
    from oci.errors import ArtifactError, ContentStoreError
    from runtime.errors import AppError

    try:
        _enter_namespaces(plan)
        from runtime.settings import RuntimeSettings
        from shim.app_source import load_task_app

        settings = RuntimeSettings(cache_dir=plan.cache_dir,
                                   max_instance_memory=plan.max_instance_memory)
        app = load_task_app(plan, settings)
        if cgroup is not None:
            cgroup.add_process(os.getpid())
        _drop_privileges(plan)
    except AppError as exc:
        return _fail(status_w, str(exc), user_error=True)
    except OSError as exc:
        return _fail(status_w, f"cannot set up the instance process: {exc}", user_error=False)
    except ArtifactError as exc:
        return _fail(status_w, str(exc), user_error=True)
    except ContentStoreError as exc:
        return _fail(status_w, f"cannot read the image from containerd: {exc}", user_error=False)
    _report(status_w, {"ready": True, "loads": _describe_loads(app)})
    return app


def _describe_loads(app: Any) -> list[str]:
    """One line per wasm: how it was obtained, for the daemon's log ("no compile on a warm start" is visible)."""
    lines = []
    for load in getattr(app, "loads", ()):
        cache = load.cache
        blob = f", blob {cache.blob_path}" if cache.blob_path is not None else ""
        lines.append(f"{load.name}: precompile cache {cache.outcome} in {cache.seconds * 1000:.0f} ms "
                     f"(wasm sha256:{cache.wasm_sha256[:12]}{blob})")
    return lines


def _fail(status_w: int, message: str, *, user_error: bool) -> None:
    """Tell the user (the task's stderr: the container log) and the daemon (the Create error)."""
    os.write(2, f"spin shim: {message}\n".encode("utf-8", "replace"))
    _report(status_w, {"error": message, "user_error": user_error})
    return None


def _drop_privileges(plan: InstancePlan) -> None:
    """Become the spec's user; a root task keeps only the capabilities the spec grants.
    A non-root task loses every capability with setuid, as a runc process would."""
    if plan.no_new_privileges:
        linux.set_no_new_privs()
    if plan.uid == 0:
        if plan.capabilities:
            linux.limit_capabilities(
                list(plan.capabilities.get("bounding", ())),
                list(plan.capabilities.get("effective", ())),
                list(plan.capabilities.get("permitted", ())),
                list(plan.capabilities.get("inheritable", ())),
            )
        return
    os.setgroups(plan.additional_gids)
    os.setgid(plan.gid)
    os.setuid(plan.uid)


def _wait_and_run(plan: InstancePlan, app: Any, go_r: int) -> int:
    if os.read(go_r, 1) != b"s":
        # The daemon closed the pipe without Start: the task was deleted or killed
        # before it ran.
        return 0
    os.close(go_r)
    if getattr(app, "serves_in_main_thread", False):
        # An http app forks its workers and waits for them; the main thread's handler drains them on SIGTERM
        # (waitpid is retried after the handler runs, PEP 475).
        signal.signal(signal.SIGTERM, lambda *_: app.interrupt())
        signal.signal(signal.SIGINT, lambda *_: app.interrupt())
        return app.run()
    result: list[int] = []

    def run_guest() -> None:
        result.append(app.run())

    # The guest runs in a thread so the main thread stays free to take SIGTERM: a
    # Python signal handler cannot run while the main thread is inside a wasm call.
    guest = threading.Thread(target=run_guest, name="guest", daemon=True)
    signal.signal(signal.SIGTERM, lambda *_: app.interrupt())
    signal.signal(signal.SIGINT, lambda *_: app.interrupt())
    guest.start()
    while guest.is_alive():
        guest.join(timeout=1.0)
    return result[0] if result else 1
