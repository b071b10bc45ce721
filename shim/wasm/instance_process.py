"""What runs inside a Wasm task's instance process, from fork to exit.

Order matters and is the point of this module:
1. leave the daemon's world: own process group, die with the daemon (a task without its
   shim is unmanaged; containerd runs `delete` for it anyway), default signal handlers;
2. enter the task's network, UTS and IPC namespaces (so ports, probes and sidecars behave as
   for a container) and its stdio;
3. on the node, still privileged: load what cannot come through the sandbox's binds of the
   interpreter's directories (wasmtime, the node libraries of C extensions, OpenSSL's config:
   shim/wasm/sandbox/python_paths.py, native_libs.py), lay out an OCI artifact's app from
   containerd's content store, open the task cgroup's `cgroup.procs` files;
4. enter the sandbox (shim/wasm/sandbox/root.py): a private mount namespace with the rootfs, the
   spec's mounts and the shim's own binds, pivot_root. From here on every path the image
   names is resolved by the kernel inside the container's root;
5. load the app with the runtime (parse, compile or load precompiled), take the node's cache
   and containerd's socket out of the root again, make it read-only if the spec says so;
6. join the task's cgroup, so that everything the app allocates from here on (the guests'
   memory, the HTTP workers forked later) is accounted and limited. The load stays outside the
   limit on purpose: a cold compile of a large component can take several times the memory the
   app will ever use, it is the node's work (the blob is shared by every pod of the image)
   rather than the app's, and runwasi and containerd-shim-spin compile in the shim, outside the
   container's cgroup, too; its untrusted inputs are bounded instead (README, "Security model"), and
   its memory by RLIMIT_DATA (shim/wasm/load_memory.py, SPIN_SHIM_LOAD_MEMORY_MAX);
7. become the spec's user: rlimits, groups, the five capability sets, no_new_privs, umask,
   seccomp (shim/wasm/sandbox/credentials.py); report ready or a user-facing error;
8. wait for Start, run, exit with the guest's code. SIGTERM interrupts a command guest at its
   next epoch check; an http app (bound to its port in step 5) forks its worker processes here
   and drains them on SIGTERM.

Nothing here returns: the process ends with os._exit, never by unwinding into the
daemon's asyncio code it was forked from.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from shim.kernel import linux
from shim.oci_spec import SpecMount, container_cpus
from shim.wasm.sandbox.credentials import Credentials

if TYPE_CHECKING:
    from shim.kernel.cgroups import Cgroup
    from shim.process.stdio import TaskStdio

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
    credentials: Credentials
    #: Namespace type ("network", "uts", "ipc") -> the path to join, or None for a new one.
    namespaces: dict[str, str | None]
    hostname: str | None
    mounts: tuple[SpecMount, ...]
    root_readonly: bool
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


class Phases:
    """Milliseconds per step of the setup, for the daemon's log: what a start costs, and where, is visible on
    every node (and to scripts/bench_start.py) without a profiler."""

    def __init__(self) -> None:
        self._clock = time.monotonic
        self._last = self._clock()
        self._spans: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = self._clock()
        self._spans.append((name, (now - self._last) * 1000))
        self._last = now

    def summary(self) -> str:
        """``namespaces 0.4 ms, imports 11.8 ms, ...``"""
        return ", ".join(f"{name} {ms:.1f} ms" for name, ms in self._spans)


def run_instance_process(plan: InstancePlan, stdio: "TaskStdio", cgroup: "Cgroup | None",
                         status_w: int, go_r: int) -> NoReturn:
    code = _SETUP_FAILED
    phases = Phases()
    try:
        _leave_daemon(plan)
        _install_stdio(stdio)
        _close_inherited_fds(keep={0, 1, 2, status_w, go_r})
        phases.mark("process")
        app = _prepare(plan, cgroup, status_w, phases)
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


_NAMESPACE_FLAGS = {"network": linux.CLONE_NEWNET, "uts": linux.CLONE_NEWUTS, "ipc": linux.CLONE_NEWIPC}


def _enter_namespaces(plan: InstancePlan) -> None:
    """Join the pod's namespaces (CRI gives the pause container's paths) or make new ones (ctr run)."""
    for ns_type, flag in _NAMESPACE_FLAGS.items():
        if ns_type not in plan.namespaces:
            continue
        path = plan.namespaces[ns_type]
        if path:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(fd, flag)
            finally:
                os.close(fd)
            continue
        linux.unshare(flag)
        if ns_type == "network":
            linux.bring_loopback_up()
        elif ns_type == "uts" and plan.hostname:
            linux.sethostname(plan.hostname)


def _report(status_w: int, message: dict[str, Any]) -> None:
    os.write(status_w, json.dumps(message).encode())
    os.close(status_w)


def _prepare(plan: InstancePlan, cgroup: "Cgroup | None", status_w: int, phases: Phases) -> Any:
    """Steps 2-7; on failure tell the daemon (-> the Create error) and the user (-> the task's stderr) and
    return None."""
    from oci.errors import ArtifactError, ContentStoreError
    from runtime.errors import AppError
    from shim.wasm.sandbox.mount_plan import MountPlanError
    from shim.wasm.sandbox.steps import SandboxError

    try:
        _enter_namespaces(plan)
        phases.mark("namespaces")
        app, sandbox_notes = _load_in_sandbox(plan, cgroup, phases)
    except (AppError, ArtifactError, SandboxError, MountPlanError) as exc:
        return _fail(status_w, str(exc), user_error=True)
    except OSError as exc:
        return _fail(status_w, f"cannot set up the instance process: {exc}", user_error=False)
    except ContentStoreError as exc:
        return _fail(status_w, f"cannot read the image from containerd: {exc}", user_error=False)
    except Exception as exc:  # noqa: BLE001 - a bug of the shim's: still a Create error the user sees, not a bare exit
        os.write(2, traceback.format_exc().encode("utf-8", "replace"))
        return _fail(status_w, f"internal error while setting up the task ({type(exc).__name__}: {exc}); the "
                               "container log has the traceback", user_error=False)
    _report(status_w, {"ready": True, "loads": _describe_loads(app), "sandbox": sandbox_notes,
                        "phases": phases.summary()})
    return app


def _load_in_sandbox(plan: InstancePlan, cgroup: "Cgroup | None", phases: Phases) -> tuple[Any, list[str]]:
    """The loaded app, and what the sandbox left out of the spec (for the daemon's log)."""
    from runtime import telemetry
    from runtime.settings import RuntimeSettings
    from shim.wasm import app_source, load_memory
    from shim.wasm.sandbox import python_paths, root
    from shim.wasm.sandbox.credentials import apply_credentials

    python_paths.import_before_pivot(content_store=app_source.needs_content_store(plan),
                                     grpc=telemetry.needs_grpc(plan.env))
    if plan.credentials.seccomp is not None:
        import shim.wasm.sandbox.seccomp  # noqa: F401 - libseccomp is found through the node's ld cache
    phases.mark("imports")
    laid_out = app_source.lay_out_image_app(plan)
    phases.mark("layout")
    load_limit, data_before = load_memory.load_memory_max(), load_memory.data_size()  # the root has no /proc
    cgroup_procs = cgroup.open_procs_files() if cgroup is not None else []
    try:
        root_plan = root.RootPlan(
            rootfs=plan.rootfs, mounts=plan.mounts, readonly=plan.root_readonly, cache_dir=plan.cache_dir,
            app_dir=laid_out.app_dir if laid_out else None,
            containerd_socket=Path(plan.containerd_address) if laid_out else None,
            module_dirs=python_paths.module_dirs())
        skipped = root.enter_root(root_plan)
        python_paths.remap_imports(root_plan.module_binds)
        phases.mark("root")
        settings = RuntimeSettings(cache_dir=Path(root.SHIM_DIR), max_instance_memory=plan.max_instance_memory,
                                   scratch_dir=Path(root.SCRATCH), cpus=container_cpus(plan.resources))
        with load_memory.load_memory_capped(load_limit, data_before):
            app = app_source.load_task_app(plan, laid_out, settings)
        phases.mark("load")
        root.release_host_paths(root_plan)
        root.choose_trust_store()
        root.seal(plan.root_readonly)
        while cgroup_procs:  # join: write our pid to each hierarchy's cgroup.procs, opened before the pivot
            fd = cgroup_procs.pop()
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        apply_credentials(plan.credentials)
        phases.mark("seal")
    except BaseException:
        if laid_out is not None:
            laid_out.discard()
        for fd in cgroup_procs:
            os.close(fd)
        raise
    return app, skipped


def _describe_loads(app: Any) -> list[str]:
    """One line per wasm: how it was obtained, for the daemon's log ("no compile on a warm start" is visible)."""
    lines = []
    for load in getattr(app, "loads", ()):
        cache = load.cache
        blob = f", blob {cache.blob_path}" if cache.blob_path is not None else ""
        lines.append(f"{load.name}: precompile cache {cache.outcome} in {cache.seconds * 1000:.0f} ms "
                     f"(wasm sha256:{cache.wasm_sha256[:12]}{blob})")
    return lines


#: Characters of a Create error kept. Messages quote image content (keys, paths, routes) and each error site
#: bounds what it quotes; this is the backstop, so no image makes a Create error longer than a screen or two.
MAX_ERROR_CHARS = 4096


def clipped_error(message: str) -> str:
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return f"{message[:MAX_ERROR_CHARS]}... ({len(message) - MAX_ERROR_CHARS} more characters cut)"


def _fail(status_w: int, message: str, *, user_error: bool) -> None:
    """Tell the user (the task's stderr: the container log) and the daemon (the Create error)."""
    message = clipped_error(message)
    os.write(2, f"spin shim: {message}\n".encode("utf-8", "replace"))
    _report(status_w, {"error": message, "user_error": user_error})
    return None


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
