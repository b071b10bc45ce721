"""shim.process.pipes.read_until_eof: the daemon's bounded read of an instance process's status report (the
instance process has read the image by then, and the daemon runs outside the pod's memory limit)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from shim.process.pipes import PipeOverflow, read_until_eof
from shim.wasm.instance_process import MAX_ERROR_CHARS, clipped_error


def _read(fd: int, limit: int) -> bytes:
    return asyncio.run(read_until_eof(fd, limit))


def test_reads_everything_up_to_eof_within_the_limit() -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 1000)
    os.close(w)
    try:
        assert _read(r, 1000) == b"x" * 1000
    finally:
        os.close(r)


def test_a_writer_that_never_stops_is_cut_off_at_the_limit() -> None:
    r, w = os.pipe()
    stop = threading.Event()

    def flood() -> None:
        try:
            while not stop.is_set():
                os.write(w, b"y" * 65536)
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    try:
        with pytest.raises(PipeOverflow, match="more than 200000 bytes"):
            _read(r, 200_000)
    finally:
        stop.set()
        os.close(r)  # the writer's next write gets EPIPE
        writer.join(5)
    assert not writer.is_alive()


def test_a_create_error_is_cut_with_what_was_cut_said() -> None:
    assert clipped_error("short") == "short"
    exact = "e" * MAX_ERROR_CHARS
    assert clipped_error(exact) == exact
    long = "f" * (MAX_ERROR_CHARS + 10)
    assert clipped_error(long) == "f" * MAX_ERROR_CHARS + "... (10 more characters cut)"
