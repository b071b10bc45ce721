"""The terminal of an exec (shim/process/console.py) against a real pty pair and pipes standing in for the FIFOs: output
reaches stdout and ends with EOF once the terminal's last holder is gone, input reaches the terminal, ResizePty sets
the window size, stdin's EOF hangs the terminal up as the runc shim does, and the master comes over a console socket
the way runc sends it."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
import struct
import termios
import tty
from typing import Any, Awaitable, Callable

from shim.process.console import Console, ConsoleSocket


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 10))


async def read_until_eof(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _read_blocking, fd)


def _read_blocking(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_output_is_copied_and_ends_when_the_terminal_is_released():
    async def body() -> bytes:
        master, slave = os.openpty()
        tty.setraw(slave)
        out_r, out_w = os.pipe()
        console = Console(master, None, out_w)
        os.write(slave, b"hello from the terminal\n")
        os.close(slave)  # the exec exited: EIO on the master, after the buffered output
        output = await read_until_eof(out_r)
        await console.close()
        return output

    assert run(body) == b"hello from the terminal\n"


def test_input_reaches_the_terminal_and_resize_sets_its_window():
    async def body() -> tuple[bytes, tuple[int, int]]:
        master, slave = os.openpty()
        tty.setraw(slave)
        in_r, in_w = os.pipe()
        console = Console(master, in_r, None)
        os.write(in_w, b"typed")
        loop = asyncio.get_running_loop()
        received = await loop.run_in_executor(None, os.read, slave, 5)
        console.resize(width=120, height=40)
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        os.close(in_w)
        os.close(slave)
        await console.close()
        return received, (cols, rows)

    assert run(body) == (b"typed", (120, 40))


def test_stdin_reaching_eof_hangs_the_terminal_up():
    async def body() -> tuple[bytes, bool]:
        master, slave = os.openpty()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        console = Console(master, in_r, out_w)
        os.close(in_w)  # CloseIO, and the client closed its end
        output = await read_until_eof(out_r)  # the copy ended: stdout was closed
        await asyncio.sleep(0.05)
        try:
            hung_up = os.read(slave, 1) == b""  # EOF (or EIO): the master is gone
        except OSError:
            hung_up = True
        os.close(slave)
        await console.close()
        return output, hung_up

    assert run(body) == (b"", True)


def test_the_master_arrives_over_the_console_socket_as_runc_sends_it():
    console_socket = ConsoleSocket()
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        assert len(console_socket.path) < 108
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as runc_side:
            runc_side.connect(console_socket.path)
            runc_side.sendmsg([b"/dev/pts/x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])
        received = console_socket.receive_master()
        try:
            assert os.ttyname(slave) and not os.get_inheritable(received)
            os.write(received, b"x")
            assert os.read(slave, 1) == b"x"
        finally:
            os.close(received)
    finally:
        console_socket.close()
        os.close(master)
        os.close(slave)
    assert not os.path.exists(os.path.dirname(console_socket.path))
