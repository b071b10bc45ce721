"""A terminal for an exec process (`kubectl exec -it`, `ctr task exec -t`), as containerd's runc shim gives one.

runc creates the pty inside the container and sends its master over `--console-socket` (SCM_RIGHTS);
the shim then copies the exec's stdin FIFO into the master and the master into its stdout FIFO (a
terminal has no separate stderr), and ResizePty sets the master's window size (containerd
pkg/process/exec.go start, runtime/v2/runc/platform.go CopyConsole). The copy runs on the daemon's
loop with non-blocking fds, so a client that stops reading blocks only its own exec, never the
daemon. As in the runc shim, stdin reaching EOF (after CloseIO) hangs the terminal up: the master
is closed and the exec's session gets SIGHUP, so a `kubectl exec -it sh` whose client went away
does not linger.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import termios

from shim.errors import Internal

_CHUNK = 65536
#: runc has connected and sent the master before `runc exec --detach` exits 0, so both are
#: queued by the time we look; this only bounds a runc that misbehaves.
_RECEIVE_TIMEOUT = 5.0
#: How long deleting the exec waits for the last output to reach the client (the runc shim's 2 s).
_DRAIN_TIMEOUT = 2.0


class ConsoleSocket:
    """The unix socket runc's `--console-socket` connects to, in a private temp directory: a bundle
    path is often too long for sun_path (108 bytes), which is why go-runc uses a temp dir too."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="spin-shim-pty-")
        self.path = os.path.join(self._dir, "console.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(self.path)
            self._sock.listen(1)
        except OSError:
            self.close()
            raise

    def receive_master(self) -> int:
        """The pty master runc sent (close-on-exec, so no runc or instance process spawned later inherits it)."""
        self._sock.settimeout(_RECEIVE_TIMEOUT)
        try:
            connection, _ = self._sock.accept()
        except TimeoutError:
            raise Internal("runc did not connect to its console socket") from None
        with connection:
            connection.settimeout(_RECEIVE_TIMEOUT)
            fd_size = array.array("i").itemsize
            _message, ancillary, _flags, _address = connection.recvmsg(
                4096, socket.CMSG_SPACE(4 * fd_size), socket.MSG_CMSG_CLOEXEC)
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fd_size])
        if not fds:
            raise Internal("runc sent no terminal over its console socket")
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class Console:
    """The copy between one pty master and the exec's stdin and stdout; owns the three fds."""

    def __init__(self, master: int, stdin: int | None, stdout: int | None) -> None:
        self._master: int | None = master
        self._stdin = stdin
        self._stdout = stdout
        for fd in (master, stdin, stdout):
            if fd is not None:
                os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        self._output = loop.create_task(self._copy_output())
        self._input = loop.create_task(self._copy_input()) if stdin is not None else None

    def resize(self, width: int, height: int) -> None:
        if self._master is not None:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def close(self) -> None:
        """Let the output drain (bounded), then release every fd."""
        if self._input is not None:
            self._input.cancel()
            await asyncio.gather(self._input, return_exceptions=True)
        await asyncio.wait({self._output}, timeout=_DRAIN_TIMEOUT)  # never raises
        await self._hang_up()

    async def _copy_output(self) -> None:
        # Without a stdout the output is still read (and dropped): a full pty would block the process.
        try:
            await _copy(self._master_fd(), self._stdout)
        finally:
            self._stdout = _close(self._stdout)  # the client sees EOF: CRI's exec attach ends

    async def _copy_input(self) -> None:
        assert self._stdin is not None
        try:
            await _copy(self._stdin, self._master_fd())
        finally:
            self._stdin = _close(self._stdin)
        await self._hang_up()  # stdin is at its end: the runc shim shuts the console down here

    async def _hang_up(self) -> None:
        # The output copy must be off the loop's selector before its fd number can be reused.
        self._output.cancel()
        await asyncio.gather(self._output, return_exceptions=True)
        self._master = _close(self._master)

    def _master_fd(self) -> int:
        if self._master is None:
            raise OSError(errno.EBADF, "the terminal was closed")
        return self._master


async def _copy(source: int, target: int | None) -> None:
    """Copy until the source ends: EOF, or EIO from a master whose slave side has no holder left.
    A target whose reader went away is dropped and the source still drained."""
    while True:
        await _ready(source, write=False)
        try:
            data = os.read(source, _CHUNK)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        if not data:
            return
        if target is not None and not await _write_all(target, data):
            target = None


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    return None


async def _write_all(fd: int, data: bytes) -> bool:
    """False when the reader is gone (EPIPE, or the master closed under us)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _ready(fd, write=True)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                return False
            raise
    return True


async def _ready(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, _resolve, ready)
    try:
        await ready
    finally:
        remove(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
