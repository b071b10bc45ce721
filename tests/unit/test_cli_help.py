"""What a person gets from the command: help at the top and per command (exit status 0, as Go's flag package
gives for -h), and a `delete` that refuses a terminal instead of writing protobuf bytes to it, while containerd's
`delete` (stdout a pipe) stays exactly as it was. Runs the installed console script, as people and containerd do.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from proto.containerd.task.v2 import shim_pb2
from shim.service.bundle_state import TASK_STATE_FILE

SHIM = str(Path(sys.executable).parent / "containerd-shim-spin-v2")
COMMANDS = ("start", "delete", "install", "uninstall", "push")
CONTAINERD_FLAGS = ("-namespace", "-address", "-publish-binary", "-id", "-bundle", "-debug", "-v, -version", "-info",
                    "-h, -help, --help")


def shim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIM, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("flag", ["--help", "-h", "-help", "help"])
def test_top_level_help_lists_the_commands_and_containerds_flags(flag: str) -> None:
    result = shim(flag)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: containerd-shim-spin-v2 ")
    for command in COMMANDS:
        assert f"\n  {command} " in result.stdout, command
    for containerd_flag in CONTAINERD_FLAGS:
        assert f"\n  {containerd_flag}" in result.stdout, containerd_flag


@pytest.mark.parametrize(("command", "says"), [
    ("start", "containerd runs this in the task's bundle directory"),
    ("delete", "writes a DeleteResponse (protobuf bytes) to stdout"),
    ("install", "--dry-run"),
    ("uninstall", "--dry-run"),
    ("push", "--insecure"),
])
def test_each_command_has_its_help(command: str, says: str) -> None:
    result = shim(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"containerd-shim-spin-v2 {command}" in result.stdout or f"] {command}" in result.stdout \
        or f" {command}\n" in result.stdout
    assert says in result.stdout


def test_install_help_names_force_and_where_backups_go() -> None:
    out = shim("install", "--help").stdout
    assert "--force" in out and ".before-spin-install" in out and ".spin-install.json" in out


def test_an_unknown_flag_points_to_help() -> None:
    result = shim("-bogus")
    assert result.returncode == 2
    assert "flag provided but not defined: -bogus" in result.stderr and "--help" in result.stderr


def test_no_command_prints_the_usage_and_fails() -> None:
    result = shim()
    assert result.returncode == 2 and result.stderr.startswith("usage: containerd-shim-spin-v2 ")


def _delete_on_a_terminal(cwd: Path) -> tuple[int, bytes, str]:
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([SHIM, "delete"], stdin=subprocess.DEVNULL, stdout=terminal,
                                   stderr=subprocess.PIPE, cwd=cwd)
        os.close(terminal)
        _, stderr = process.communicate(timeout=60)
        written = b""
        os.set_blocking(controller, False)
        try:
            while chunk := os.read(controller, 4096):
                written += chunk
        except (BlockingIOError, OSError):
            pass
        return process.returncode, written, stderr.decode()
    finally:
        os.close(controller)


def test_delete_on_a_terminal_explains_itself_and_does_nothing(tmp_path: Path) -> None:
    state = tmp_path / TASK_STATE_FILE
    state.write_text("{}")
    status, on_terminal, stderr = _delete_on_a_terminal(tmp_path)
    assert status == 2
    assert on_terminal == b"", "bytes written to the terminal"
    assert "delete is run by containerd" in stderr and "> /dev/null" in stderr
    assert state.exists(), "delete cleaned up the directory the person stood in"


def test_delete_through_a_pipe_is_still_containerds_delete(tmp_path: Path) -> None:
    """As containerd runs it (stdout a pipe): the cleanup runs and stdout is a DeleteResponse, nothing else."""
    (tmp_path / TASK_STATE_FILE).write_text("{}")
    result = subprocess.run([SHIM, "-namespace", "default", "-id", "t1", "delete"], capture_output=True,
                            timeout=60, check=False, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stderr) == (0, b"")
    response = shim_pb2.DeleteResponse.FromString(result.stdout)
    assert response.exit_status == 137 and response.exited_at.seconds > 0
    assert not (tmp_path / TASK_STATE_FILE).exists()


def test_help_adds_no_import_to_the_start_path() -> None:
    """The help text is a constant in shim.cli.main; `start` imports exactly what it did before help existed."""
    code = "import sys; before = set(sys.modules)\nimport shim.cli.main\nprint(sorted(set(sys.modules) - before))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == str(['__future__', 'shim', 'shim.cli', 'shim.cli.flags', 'shim.cli.main',
                                         'shim.record'])
