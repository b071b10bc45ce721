"""The instance process's status report, both ends: its setup failures become one bounded report and log line
(shim.wasm.instance_process), and the daemon reads it with a bound (shim.process.pipes.read_until_eof: the
instance process has read the image by then, and the daemon runs outside the pod's memory limit)."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest

from runtime.errors import ManifestError
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


@pytest.mark.parametrize("raised, expected, user_error", [
    (RecursionError("maximum recursion depth exceeded"),
     "internal error while setting up the task (RecursionError: maximum recursion depth exceeded); the container "
     "log has the traceback", False),
    (ManifestError("/spin.toml: " + "k" * 10_000), "/spin.toml: " + "k" * (MAX_ERROR_CHARS - 12), True),
])
def test_a_setup_failure_is_one_report_and_one_log_line(monkeypatch, capfd, raised, expected, user_error):
    """Whatever the setup raises reaches the daemon as a Create error (not a bare exit), cut to MAX_ERROR_CHARS."""
    from shim.wasm import instance_process

    def fail(_plan: object) -> None:
        raise raised

    monkeypatch.setattr(instance_process, "_enter_namespaces", fail)
    r, w = os.pipe()
    try:
        assert instance_process._prepare(None, None, w, instance_process.Phases()) is None  # type: ignore[arg-type]
        report = json.loads(os.read(r, 1 << 20))
    finally:
        os.close(r)
    assert report["user_error"] is user_error
    assert report["error"].startswith(expected) and len(report["error"]) <= MAX_ERROR_CHARS + 40, report["error"]
    err = capfd.readouterr().err
    assert "spin shim: " + report["error"] + "\n" in err
