"""The task's stdio, turned from what containerd sent into fds the instance process gets.

containerd sends three strings (the runc shim's createIO, containerd
cmd/containerd-shim-runc-v2/process/io.go): a FIFO path (ctr, CRI: the client already
opened the read ends), `file:///abs/path` (append to a file), or
`binary:///abs/logger?k=v` (a logging binary that reads fds 3 and 4 and closes fd 5 when
ready). The instance process dup2()s the fds onto 0/1/2, so guest output reaches `kubectl
logs` with no copying through the shim.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import urllib.parse
from dataclasses import dataclass, field

from shim.errors import InvalidArgument
from shim.process.pipes import PipeOverflow, read_until_eof

_LOGGER_READY_TIMEOUT = 10.0


@dataclass
class TaskStdio:
    """fds owned by the daemon until they are handed to the instance process."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    logger: subprocess.Popen[bytes] | None = None
    _owned: list[int] = field(default_factory=list)

    def close(self) -> None:
        """Close the daemon's copies; the numbers are forgotten so that nothing later
        writes into an fd that has been reused for something else."""
        self.stdin = self.stdout = self.stderr = None
        for fd in self._owned:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned.clear()

    def write_error(self, message: str) -> None:
        """Tell the user on the task's stderr, which is where `ctr run` and `kubectl logs`
        look; the containerd log alone is not read by app developers (containerd-shim-spin#228)."""
        if self.stderr is None:
            return
        try:
            os.write(self.stderr, (message.rstrip("\n") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass


def _open_fifo_for_writing(path: str) -> int:
    """O_WRONLY when the client already reads (ctr and CRI open their ends before Create),
    so a guest writing after the client went away gets EPIPE instead of blocking forever;
    O_RDWR as a fallback, which never blocks on open (runwasi's choice)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != 6:  # ENXIO: no reader yet
            raise
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    return fd


def hold_fifo_open_for_writing(path: str) -> int:
    """A write end of a stdin FIFO the daemon already reads from: while the daemon holds it, the
    reader cannot see EOF before the client has even opened its end (the runc shim's openStdin for
    an exec); closing it is CloseIO. O_NONBLOCK cannot fail with ENXIO, since a reader exists."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"cannot open stdin {path}: {exc.strerror}") from None


def _open_file_uri(uri: urllib.parse.ParseResult) -> int:
    path = uri.path
    if not os.path.isabs(path):
        raise InvalidArgument(f"file:// log URI needs an absolute path, got {path!r}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


async def _start_logger(uri: urllib.parse.ParseResult, task_id: str, namespace: str,
                        stdio: TaskStdio) -> tuple[int, int]:
    """Spawn the logging binary the way containerd's NewBinaryCmd does and wait until it
    closes its ready fd; returns the write ends for stdout and stderr."""
    args = [uri.path]
    for key, values in urllib.parse.parse_qs(uri.query, keep_blank_values=True).items():
        args.append(key)
        if values and values[0]:
            args.append(values[0])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()
    env = dict(os.environ, CONTAINER_ID=task_id, CONTAINER_NAMESPACE=namespace)

    def child_fds() -> None:
        # fds 3, 4, 5 by position, as the logging protocol numbers them; move the sources
        # above that range first so no dup2 overwrites a source still to be copied.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (out_r, err_r, ready_w)]
        for target, source in zip((3, 4, 5), high):
            os.dup2(source, target, inheritable=True)

    try:
        logger = subprocess.Popen(  # reaped by the daemon's reaper; exit status unused
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            # close_fds runs after preexec_fn: every other fd, the high copies included, is
            # closed, so the logger's close(5) is the last writer going away.
            stderr=subprocess.DEVNULL, preexec_fn=child_fds, close_fds=True, pass_fds=(3, 4, 5),
            start_new_session=True,
        )
    except OSError as exc:
        for fd in (out_r, out_w, err_r, err_w, ready_r, ready_w):
            os.close(fd)
        raise InvalidArgument(f"cannot start logging binary {uri.path}: {exc.strerror}") from None
    for fd in (out_r, err_r, ready_w):
        os.close(fd)
    stdio.logger = logger
    stdio._owned.extend((out_w, err_w))
    try:
        # The protocol is EOF alone (containerd's shim logging: the binary closes fd 5 when ready); bytes are
        # tolerated, as ctr's own loggers write none, but not without end.
        await asyncio.wait_for(read_until_eof(ready_r, 64 * 1024), _LOGGER_READY_TIMEOUT)
    except asyncio.TimeoutError:
        raise InvalidArgument(f"logging binary {uri.path} did not become ready") from None
    except PipeOverflow:
        raise InvalidArgument(f"logging binary {uri.path} wrote without end to its ready fd (fd 5)") from None
    finally:
        os.close(ready_r)
    return out_w, err_w


async def open_task_stdio(stdin: str, stdout: str, stderr: str, *, task_id: str,
                          namespace: str) -> TaskStdio:
    stdio = TaskStdio()
    try:
        if stdin:
            fd = os.open(stdin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(fd, True)
            stdio.stdin = fd
            stdio._owned.append(fd)
        out_uri = urllib.parse.urlparse(stdout) if stdout else None
        err_uri = urllib.parse.urlparse(stderr) if stderr else None
        if out_uri is not None and out_uri.scheme in ("binary", "binary-v2"):
            stdio.stdout, stdio.stderr = await _start_logger(out_uri, task_id, namespace, stdio)
            return stdio
        for name, raw, uri in (("stdout", stdout, out_uri), ("stderr", stderr, err_uri)):
            if uri is None:
                continue
            if uri.scheme in ("", "fifo"):
                fd = _open_fifo_for_writing(uri.path if uri.scheme else raw)
            elif uri.scheme == "file":
                fd = _open_file_uri(uri)
            else:
                raise InvalidArgument(f"unsupported {name} URI scheme {uri.scheme!r} in {raw!r}")
            stdio._owned.append(fd)
            setattr(stdio, name, fd)
        return stdio
    except OSError as exc:
        stdio.close()
        raise InvalidArgument(f"cannot open task stdio: {exc}") from None
    except BaseException:
        stdio.close()
        raise
