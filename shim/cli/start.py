"""`start`: find or spawn the shim daemon for this task's group and print its address.

The contract (containerd core/runtime/v2/binary.go Start, pkg/shim/util.go Command): cwd
is the bundle; stdout and stderr are ONE pipe (cmd.CombinedOutput()) that containerd trims
and parses as the address, so nothing else may be written; containerd dials the address as
soon as we exit, so the socket must already listen. We bind and listen here, before
forking: the daemon inherits the listening socket (the Go shim passes it as fd 3),
connections queue in its backlog while it imports, and `start` returns in a few
milliseconds. Tasks of one pod (same io.kubernetes.cri.sandbox-id) share one daemon
through a deterministic socket path.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys

from shim.cli.flags import Flags
from shim.daemon.args import DaemonArgs
from shim.sha256 import sha256

DEFAULT_SOCKET_DIR = "/run/containerd/s"
_MAX_STDIN = 10 << 20
# The unix socket path limit of containerd's Go shims (socketPathLimit, pkg/shim/util_unix.go).
_MAX_SOCKET_PATH = 106


class StartError(Exception):
    pass


def socket_path(address: str, namespace: str, group: str, socket_dir: str = DEFAULT_SOCKET_DIR) -> str:
    """sha256 of filepath.Join(address, namespace, group), as Go's SocketAddress."""
    joined = os.path.normpath(os.path.join(address, namespace, group))
    path = os.path.join(socket_dir, sha256(joined.encode()).hexdigest())
    if len(path) > _MAX_SOCKET_PATH:
        raise StartError(f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes")
    return path


def _read_stdin() -> bytes:
    try:
        if os.isatty(0):
            return b""
    except OSError:
        return b""
    chunks: list[bytes] = []
    size = 0
    while size <= _MAX_STDIN:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _group_key(bundle: str, task_id: str) -> str:
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            annotations = json.load(f).get("annotations") or {}
    except (OSError, ValueError):
        return task_id
    for name in ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"):
        if annotations.get(name):
            return str(annotations[name])
    return task_id


def remove_if_stale(path: str) -> bool:
    """Remove a shim socket nobody listens on any more (its daemon died); True if a live
    daemon answers on it. Used by `start` to share or replace, by `delete` to clean up."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return False
    finally:
        probe.close()


def bind_or_reuse(path: str) -> socket.socket | None:
    """A listening socket for a new daemon, or None when a live daemon already owns it."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if remove_if_stale(path):
                return None  # a daemon for this group is alive: share it
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise StartError(f"cannot bind {path}")


def write_address(bundle: str, address: str) -> None:
    target = os.path.join(bundle, "address")
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, target)


def _spawn_daemon(sock: socket.socket, args: DaemonArgs) -> None:
    pid = os.fork()
    if pid:
        sock.close()
        return
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)  # containerd waits for EOF on the start pipe
        os.close(devnull)
        from shim.daemon.serve import run_daemon
        from shim.kernel import linux

        linux.raise_oom_score()

        code = run_daemon(sock, args)
    finally:
        os._exit(code)


def _fork_through_server(sock: socket.socket, daemon_args: DaemonArgs) -> bool:
    """True when the node's warm fork server (shim/forkserver) forked the daemon."""
    from shim.forkserver import client

    if not client.enabled():
        return False
    try:
        pid = client.fork_through_server(sock, daemon_args, sys.argv)
    except client.ForkServerLost as exc:
        raise StartError(str(exc)) from None
    if pid is None:
        return False
    sock.close()
    return True


def run_start(flags: Flags) -> int:
    try:
        if not flags.id:
            raise StartError("-id is required")
        from shim.service.options import parse_start_stdin

        start_input = parse_start_stdin(_read_stdin(), flags.id)
        namespace = flags.namespace or start_input.namespace or os.environ.get("NAMESPACE", "")
        if not namespace:
            raise StartError("-namespace is required")
        address = flags.address or start_input.grpc_address or os.environ.get("GRPC_ADDRESS", "")
        if not address:
            raise StartError("-address is required")
        bundle = os.getcwd()
        path = socket_path(address, namespace, _group_key(bundle, flags.id),
                           start_input.socket_dir or DEFAULT_SOCKET_DIR)
        sock = bind_or_reuse(path)
        if sock is not None:
            daemon_args = DaemonArgs(
                namespace=namespace, containerd_address=address,
                ttrpc_address=start_input.ttrpc_address or os.environ.get("TTRPC_ADDRESS"),
                task_id=flags.id, bundle=bundle, socket_path=path,
                debug=flags.debug or start_input.debug, options=start_input.options,
            )
            if not _fork_through_server(sock, daemon_args):
                _spawn_daemon(sock, daemon_args)
        shim_address = "unix://" + path
        write_address(bundle, shim_address)
        sys.stdout.write(shim_address)
        sys.stdout.flush()
        return 0
    except (StartError, OSError) as exc:
        # This text becomes part of containerd's "start failed" error.
        sys.stdout.write(f"containerd-shim-spin-v2 start: {exc}")
        sys.stdout.flush()
        return 1
