"""Bad inputs through a real containerd: each fails `ctr run` with a clear message and
leaves nothing behind (issue 2, acceptance 4).

The message must reach the user where they look: the `ctr` error (containerd wraps our
ttrpc status) and the task's stderr (the container log), not only containerd's log.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

import pytest

from tests.e2e.support import RUNTIME, assert_no_leaks

pytestmark = pytest.mark.e2e


def _run_failing(containerd, image: str, task_id: str, *args: str) -> str:
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, task_id, *args, check=False)
    assert result.returncode != 0, f"expected failure, got:\n{result.stdout}"
    containerd.ctr("containers", "rm", task_id, check=False)  # --rm does not remove after a failed create
    return result.stderr


def _ctr_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("ctr: ")]
    assert lines, f"no ctr error in:\n{stderr}"
    return lines[-1]


def test_missing_wasm_file(containerd, images, guests):
    image = images.wasm_image("hello", {"/hello.wasm": guests["hello.wasm"]}, ["/hello.wasm"])
    stderr = _run_failing(containerd, image, "err-missing", "/nope.wasm")
    error = _ctr_error_line(stderr)
    assert "failed to create shim task" in error
    assert "/nope.wasm" in error and "no such file" in error
    assert str(containerd.state_dir) not in error  # named as in the image, not by node path
    assert "spin shim: " in stderr  # also written to the task's stderr
    assert_no_leaks(containerd, ["err-missing"])


def test_corrupt_wasm(containerd, images, guests):
    image = images.wasm_image("corrupt", {"/app.wasm": guests["corrupt.wasm"]}, ["/app.wasm"])
    error = _ctr_error_line(_run_failing(containerd, image, "err-corrupt"))
    assert "app.wasm" in error
    assert "invalid" in error.lower() or "not a valid" in error.lower(), error
    assert_no_leaks(containerd, ["err-corrupt"])


def test_truncated_wasm(containerd, images, guests):
    image = images.wasm_image("truncated", {"/app.wasm": guests["truncated.wasm"]}, ["/app.wasm"])
    error = _ctr_error_line(_run_failing(containerd, image, "err-truncated"))
    assert "app.wasm" in error
    assert_no_leaks(containerd, ["err-truncated"])


def test_broken_spin_toml(containerd, images, guest_apps):
    image = images.wasm_image("broken-toml", {"/": guest_apps["broken-toml"]}, ["/"])
    error = _ctr_error_line(_run_failing(containerd, image, "err-toml"))
    assert "spin.toml" in error
    assert "line" in error  # where the syntax error is
    assert_no_leaks(containerd, ["err-toml"])


def test_unknown_trigger_type(containerd, images, guest_apps):
    image = images.wasm_image("unknown-trigger", {"/": guest_apps["unknown-trigger"]}, ["/"])
    error = _ctr_error_line(_run_failing(containerd, image, "err-trigger"))
    assert "foo" in error and "trigger" in error
    assert_no_leaks(containerd, ["err-trigger"])


def test_component_missing_an_import(containerd, images, guests):
    image = images.wasm_image("missing-import", {"/app.wasm": guests["missing-import-component.wasm"]},
                              ["/app.wasm"])
    error = _ctr_error_line(_run_failing(containerd, image, "err-import"))
    assert "import" in error
    assert_no_leaks(containerd, ["err-import"])


def _run_on_a_pty(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """`ctr run -t` insists on a console for its stdin; give it one."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env,
                               close_fds=True, start_new_session=True)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Whether it had exited *before* this select: then a timeout means all it wrote was read (checked after
        # the select, an exit between the two lost the message once in CI).
        exited = process.poll() is not None
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif exited:
            break
    os.close(controller)
    return process.wait(timeout=10), output.decode("utf-8", "replace")


def test_terminal_request_is_refused(containerd, images, guests):
    image = images.wasm_image("hello", {"/hello.wasm": guests["hello.wasm"]}, ["/hello.wasm"])
    argv = [str(containerd.bin_dir / "ctr"), "--address", containerd.address, "run", "-t", "--rm",
            "--runtime", RUNTIME, image, "err-tty"]
    code, output = _run_on_a_pty(argv)
    assert code != 0, output
    assert "terminal" in output and "without -t" in output, output
    containerd.ctr("containers", "rm", "err-tty", check=False)
    assert_no_leaks(containerd, ["err-tty"])



#: What `ctr task <command>` of a running Wasm task prints: what is not supported, why, and what to do instead.
_UNSUPPORTED_SENTENCES = {
    "pause": ("pausing a task is not supported by this shim: it does not freeze a task's cgroup", "ctr task kill"),
    "resume": ("resuming a task is not supported by this shim: it never pauses a task", "nothing to resume"),
    # containerd's client pauses a task before it checkpoints it, so the Pause sentence is what ctr shows.
    "checkpoint": ("pausing a task is not supported by this shim", "ctr task kill"),
}


@pytest.mark.parametrize("command", sorted(_UNSUPPORTED_SENTENCES))
def test_unsupported_task_commands_say_why_and_leave_the_task_running(containerd, images, guests, command):
    image = images.wasm_image("loop", {"/loop.wasm": guests["loop.wasm"]}, ["/loop.wasm"])
    task_id = f"err-{command}"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, image, task_id)
        result = containerd.ctr("tasks", command, task_id, check=False)
        assert result.returncode != 0, result.stdout
        error = _ctr_error_line(result.stderr)
        reason, instead = _UNSUPPORTED_SENTENCES[command]
        assert reason in error and instead in error, error
        status = [line.split()[2] for line in containerd.ctr("tasks", "ls").stdout.splitlines()[1:]
                  if line.split()[:1] == [task_id]]
        assert status == ["RUNNING"], status
    finally:
        containerd.ctr("tasks", "rm", "-f", task_id, check=False)
        containerd.ctr("containers", "rm", task_id, check=False)
    assert_no_leaks(containerd, [task_id])
