"""What containerd and its clients observe besides the exit code: task events in the order
containerd requires, guest output through `file://` and `binary://` log URIs, the v3 Task
service, and the shim's own log lines in containerd's log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proto.containerd.task.v3 import shim_pb2 as shim_v3
from shim.cli.start import socket_path
from shim.ttrpc.client import TtrpcClient
from tests.e2e.support import RUNTIME, assert_no_leaks, wait_until

pytestmark = pytest.mark.e2e

TASK_TOPICS = ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")


def _hello(images, guests) -> str:
    return images.wasm_image("hello", {"/hello.wasm": guests["hello.wasm"]}, ["/hello.wasm"])


def test_events_arrive_in_containerd_order(containerd, images, guests):
    image = _hello(images, guests)
    argv = [str(containerd.bin_dir / "ctr"), "--address", containerd.address, "events"]
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")})
    try:
        time.sleep(0.5)  # let the subscription start
        result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "events-order", check=False)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
    finally:
        watcher.terminate()
        output, _ = watcher.communicate(timeout=10)
    topics = [topic for line in output.splitlines() if "events-order" in line
              for topic in TASK_TOPICS if f" {topic} " in f" {line} "]
    assert topics == list(TASK_TOPICS), output
    assert_no_leaks(containerd, ["events-order"])


def test_file_log_uri_receives_guest_output(containerd, images, guests, tmp_path):
    image = _hello(images, guests)
    log_file = tmp_path / "logs" / "task.log"
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--log-uri", f"file://{log_file}",
                            image, "log-file", check=False)
    assert result.returncode == 0, result.stderr
    content = log_file.read_text()
    assert "hello from wasm" in content and "hello on stderr" in content
    assert_no_leaks(containerd, ["log-file"])


LOGGER = textwrap.dedent("""\
    import os, sys
    out_path = sys.argv[1]
    os.close(5)  # ready: the shim may start the task now
    with open(out_path, "wb") as out:
        for fd, tag in ((3, b"out: "), (4, b"err: ")):
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
            for line in data.splitlines():
                out.write(tag + line + b"\\n")
    """)


def test_binary_log_uri_spawns_the_logger(containerd, images, guests, tmp_path):
    image = _hello(images, guests)
    logger = tmp_path / "logger"
    logger.write_text(f"#!{sys.executable}\n" + LOGGER)
    logger.chmod(0o755)
    captured = tmp_path / "captured.log"
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME,
                            "--log-uri", f"binary://{logger}?{captured}=", image, "log-binary",
                            check=False)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: captured.exists() and "err: " in captured.read_text(), timeout=10)
    text = captured.read_text()
    assert "out: hello from wasm" in text
    assert "err: hello on stderr" in text
    assert_no_leaks(containerd, ["log-binary"])


def test_task_v3_service_is_served_too(containerd_16, images_16, guests):
    image = images_16.wasm_image("loop", {"/loop.wasm": guests["loop.wasm"]}, ["/loop.wasm"])
    task_id = "v3-state"
    containerd_16.ctr("run", "-d", "--runtime", RUNTIME, image, task_id)
    try:
        async def state() -> shim_v3.StateResponse:
            client = await TtrpcClient.connect(socket_path(containerd_16.address, "default", task_id))
            try:
                return await client.call("containerd.task.v3.Task", "State",
                                         shim_v3.StateRequest(id=task_id), shim_v3.StateResponse,
                                         timeout=10)
            finally:
                client.close()

        response = asyncio.run(state())
        assert response.id == task_id and response.status == shim_v3.StateResponse().status + 2
    finally:
        containerd_16.ctr("tasks", "kill", "-s", "SIGKILL", task_id, check=False)
        wait_until(lambda: "RUNNING" not in containerd_16.ctr("tasks", "ls").stdout)
        containerd_16.ctr("tasks", "rm", "-f", task_id, check=False)
        containerd_16.ctr("containers", "rm", task_id, check=False)
    assert_no_leaks(containerd_16, [task_id])


def test_shim_logs_reach_containerds_log_at_debug(containerd_16, images_16, guests):
    image = images_16.wasm_image("hello", {"/hello.wasm": guests["hello.wasm"]}, ["/hello.wasm"])
    containerd_16.ctr("run", "--rm", "--runtime", RUNTIME, image, "log-debug")
    assert wait_until(lambda: "instance log-debug ready" in Path(containerd_16.log_path).read_text())
    lines = [line for line in Path(containerd_16.log_path).read_text().splitlines()
             if "instance log-debug ready" in line]
    assert "level=debug" in lines[0] and "runtime=io.containerd.spin.v2" in lines[0]


def test_version_and_info_flags():
    shim = Path(sys.executable).parent / "containerd-shim-spin-v2"
    version = subprocess.run([str(shim), "-v"], capture_output=True, text=True, check=True)
    assert "io.containerd.spin.v2" in version.stdout and "Version:" in version.stdout
    from proto.containerd.types import introspection_pb2

    info = subprocess.run([str(shim), "-info"], capture_output=True, check=True)
    parsed = introspection_pb2.RuntimeInfo.FromString(info.stdout)
    assert parsed.name == "io.containerd.spin.v2" and parsed.version.version
