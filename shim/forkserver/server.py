"""The fork server process: `containerd-shim-spin-v2 fork-server <key>`, spawned by a `start` that found none.

It imports what every daemon and instance process imports (WARM_MODULES), freezes the GC so those objects'
pages stay shared with every fork, and answers requests one at a time on its root-only socket, single-threaded
(it checks it has one thread before every fork: a fork copies only the calling thread, and a lock another
thread held would stay locked in the daemon). Daemons are its children only until it exits (then init's, like
a cold path's daemon once `start` has gone): it ignores SIGCHLD, so it never waits for or holds a daemon's exit,
and its death or upgrade never touches a running pod.

It lives in containerd's cgroup, like the shims, so systemd's `KillMode=process` for containerd.service leaves
it running across containerd restarts, as it leaves the shims; it exits after SPIN_SHIM_FORK_SERVER_IDLE_SECONDS
(300 by default) without a request, or on SIGTERM. Once the installed code changes, `start` computes another key
and asks that build's server, so an outdated server gets no more requests and idles out.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import os
import select
import signal
import socket
import struct
import sys
from typing import Any, NoReturn

from shim.env import positive_seconds
from shim.forkserver import protocol
from shim.forkserver.adopt import (
    StartContext,
    adopt,
    argv_fits,
    namespace_ids,
    set_argv,
)
from shim.forkserver.build_key import build_key

IDLE_ENV = "SPIN_SHIM_FORK_SERVER_IDLE_SECONDS"
IDLE_SECONDS = 300.0
#: Imported once here instead of in every daemon and instance process: the daemon, the Task service, the
#: instance process and its sandbox, the runtime's loader, triggers and executors, wasmtime. Not grpc: only an
#: artifact's load needs it, and its threads and fork handlers have no place in every daemon.
WARM_MODULES = (
    "shim.daemon.serve", "shim.service.api", "shim.service.task", "shim.service.exec_process", "shim.service.rootfs",
    "shim.wasm.instance", "shim.wasm.instance_process", "shim.wasm.app_source", "shim.runc.instance",
    "shim.kernel.cgroups", "shim.oci_spec", "oci.errors", "runtime.errors", "runtime.settings",
    "shim.wasm.sandbox.root", "shim.wasm.sandbox.credentials", "shim.wasm.sandbox.mount_plan",
    "shim.wasm.sandbox.python_paths", "shim.wasm.sandbox.native_libs", "wasmtime", "wasmtime.component",
    "runtime.loader", "runtime.manifest", "runtime.files", "runtime.precompile", "runtime.engine",
    "runtime.guest", "runtime.http.trigger", "runtime.http.server", "runtime.http.workers", "runtime.http.listen",
    "runtime.http.static_response", "runtime.epoch", "runtime.host.executor", "runtime.spin.services",
    "runtime.spin.outbound",
)


def run_server(key: str) -> int:
    """The server's main: returns when idle, outdated or terminated."""
    try:
        set_argv((sys.argv[0], "fork-server", key))  # hide the padding from ps
    except ValueError:
        pass
    protocol.make_socket_dir()
    lock = os.open(protocol.lock_path(key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return 0  # another server of this build runs, or is starting
    bound_inode = None
    try:
        _sweep_dead_servers(key)
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the daemon will meet and report the same error
                pass
        _load_native_state()
        _load_host_providers()
        if build_key() != key:
            return 0  # the installed code changed while we imported it
        listener = _listen(protocol.socket_path(key))
        bound_inode = os.stat(protocol.socket_path(key)).st_ino
        gc.collect()
        gc.freeze()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the daemons (_fork_daemon)
        _serve(listener, key)
    finally:
        try:
            if bound_inode is not None and os.stat(protocol.socket_path(key)).st_ino == bound_inode:
                os.unlink(protocol.socket_path(key))  # ours, not a successor's
        except OSError:
            pass
        _remove_held(protocol.lock_path(key), lock)
    return 0


def _sweep_dead_servers(key: str) -> None:
    """Remove the socket and lock files other builds' servers left when they were killed (SIGKILL skips their
    own cleanup): a lock nobody holds is a server that is gone. Left alone, every upgrade of a node would leave
    a pair behind for good. (A server of that build starting at this very moment, between creating its lock and
    taking it, may lose its file; at worst two servers of that build then run until one idles out.)"""
    own = os.path.basename(protocol.lock_path(key))
    for name in os.listdir(protocol.SOCKET_DIR):
        if not name.endswith(".lock") or name == own:
            continue
        path = os.path.join(protocol.SOCKET_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its server lives
            continue
        try:
            os.unlink(path.removesuffix(".lock") + ".sock")
        except FileNotFoundError:
            pass
        _remove_held(path, fd)


def _remove_held(path: str, fd: int) -> None:
    """Unlink a lock file while holding it (a server starting now creates and locks a new one), then let go."""
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _load_native_state() -> None:
    """What every instance process loads before its pivot (node libraries, OpenSSL's config, the engine
    fingerprint), loaded here once: forks inherit it, and their own call finds it done."""
    try:
        from shim.wasm.sandbox import python_paths

        python_paths.import_before_pivot(content_store=False)
        python_paths.module_dirs()
    except Exception:  # noqa: BLE001 - the instance process meets and reports the same error
        pass


def _load_host_providers() -> None:
    """The host interfaces every app links (runtime.host.registry's provider packages: WASI, Spin's services and
    their bindings, ~66 modules), imported here once: an HTTP app's first load imported them in its instance
    process, 68-112 ms of each js-echo start (9 ms once imported). They import no driver and no grpc at import."""
    try:
        from runtime.host.registry import REGISTRY

        REGISTRY.load_providers()
    except Exception:  # noqa: BLE001 - the instance process meets and reports the same error
        pass


def _listen(path: str) -> socket.socket:
    """Bound at a temporary name, made root-only, then renamed into place: never reachable with a wider mode."""
    temporary = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    listener.bind(temporary)
    os.chmod(temporary, 0o600)
    listener.listen(64)
    os.replace(temporary, path)
    return listener


def _serve(listener: socket.socket, key: str) -> None:
    idle = positive_seconds(IDLE_ENV, IDLE_SECONDS)
    while True:
        ready, _, _ = select.select([listener], [], [], idle)
        if not ready:
            return
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            try:
                _handle(conn, listener, key)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # the client's problem: it sees the connection close without an answer


def _handle(conn: socket.socket, listener: socket.socket, key: str) -> None:
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != 0:
        protocol.send(conn, {"refused": f"uid {uid} is not root"})
        return
    request, fds = protocol.receive(conn, max_fds=1)
    try:
        refusal = _refusal(request, fds, key)
        if refusal:
            protocol.send(conn, {"refused": refusal})
            return
        context = StartContext.from_json(request["context"])
        daemon_pid = _fork_daemon(fds[0], request["daemon"], context, keep_out=(conn, listener))
        protocol.send(conn, {"pid": daemon_pid})
    finally:
        for fd in fds:
            os.close(fd)


def _refusal(request: dict[str, Any], fds: list[int], key: str) -> str | None:
    if request.get("version") != protocol.PROTOCOL_VERSION:
        return f"protocol version {request.get('version')!r}, this server speaks {protocol.PROTOCOL_VERSION}"
    if request.get("key") != key:
        return "another shim build"
    if len(fds) != 1:
        return "no listening socket passed"
    if not argv_fits(tuple(request["context"]["argv"])):
        return "start's command line is longer than a daemon forked here can show"
    if namespace_ids() != request["context"]["namespaces"]:
        return "start runs in other namespaces than the server"
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        return f"the server has {threads} threads"
    return None


def _fork_daemon(listen_fd: int, daemon: dict[str, Any], context: StartContext,
                 keep_out: tuple[socket.socket, ...]) -> int:
    """Fork the daemon; return its pid. One fork, not the classic two: the server ignores SIGCHLD, so the kernel
    reaps a daemon that exits without the server waiting for it, and a daemon outlives the server as any orphan
    does (a second fork cost ~4 ms of every start)."""
    daemon = {**daemon, "fork_server_pid": os.getpid()}
    pid = os.fork()
    if pid == 0:
        _become_daemon(listen_fd, daemon, context, keep_out)
    return pid


def _become_daemon(listen_fd: int, daemon: dict[str, Any], context: StartContext,
                   keep_out: tuple[socket.socket, ...]) -> NoReturn:
    code = 1
    try:
        for sock in keep_out:
            sock.close()
        os.setsid()  # a session of its own, as the cold path's daemon
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.closerange(3, listen_fd)
        os.closerange(listen_fd + 1, 65536)  # the server's lock among them: it must not outlive the server
        adopt(context)
        from shim.daemon.args import DaemonArgs
        from shim.daemon.serve import run_daemon

        sock = socket.socket(fileno=listen_fd)
        code = run_daemon(sock, DaemonArgs(**daemon))
    finally:
        os._exit(code)
