"""Serving a Spin HTTP app through a real containerd with ctr, and talking to it with curl.

`ctr run -d --net-host` is how a developer tries an app locally: the app listens on the host's network, on the
address SPIN_HTTP_LISTEN_ADDR names (a free port on 127.0.0.1 here, so tests never collide). The task's stdout
and stderr go to a file (`--log-uri file://...`), which is the container log the tests read.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.support import RUNTIME, assert_no_leaks, wait_until

#: Seconds an app gets from `ctr run -d` to answering its health endpoint (a cold compile of a 37 MB component
#: takes ~6 s on these machines; the compile cache is shared by the session).
READY_TIMEOUT = 90.0
HEALTH_PATH = "/.well-known/spin/health"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> object:
        return json.loads(self.body)


def curl(url: str, *args: str, data: bytes | None = None, timeout: float = 60.0) -> Response:
    """One request with the curl CLI. Header names are lower-cased; the last header block wins (after a 100)."""
    with tempfile.TemporaryDirectory() as scratch:
        header_file = Path(scratch) / "headers"
        body_file = Path(scratch) / "body"
        argv = ["curl", "-sS", "--max-time", str(timeout), "-D", str(header_file), "-o", str(body_file),
                "-w", "%{http_code}", *args]
        if data is not None:
            data_file = Path(scratch) / "data"
            data_file.write_bytes(data)
            argv += ["--data-binary", f"@{data_file}"]
        result = subprocess.run([*argv, url], capture_output=True, text=True, timeout=timeout + 10)
        if result.returncode != 0:
            raise AssertionError(f"curl {url} failed ({result.returncode}): {result.stderr.strip()}")
        headers: dict[str, str] = {}
        for line in header_file.read_text("latin-1").splitlines():
            if line.startswith("HTTP/"):
                headers = {}
            elif ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return Response(int(result.stdout.strip() or 0), headers, body_file.read_bytes())


@dataclass
class HttpTask:
    """A Spin HTTP app running detached under ctr, with its own port and log file."""

    daemon: object
    image: str
    task_id: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    log_path: Path = Path()
    #: More `ctr run` flags (--user, --seccomp, --mount, --read-only, ...).
    ctr_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *, wait_ready: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr run -d`; returns ctr's result (check returncode for create errors)."""
        if not self.port:
            self.port = free_port()
        env = {"SPIN_HTTP_LISTEN_ADDR": f"127.0.0.1:{self.port}", **self.env}
        self.log_path = Path(tempfile.mkdtemp(prefix=f"{self.task_id}-")) / "container.log"
        self.log_path.touch()
        args = ["run", "-d", "--net-host", "--runtime", RUNTIME, "--log-uri", f"file://{self.log_path}"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        args += self.ctr_args
        result = self.daemon.ctr(*args, self.image, self.task_id, "/", check=False)  # type: ignore[attr-defined]
        if result.returncode == 0 and wait_ready:
            self.wait_ready()
        return result

    def start_again(self) -> None:
        """A new task on the same container (its rootfs, so files the app wrote, survive), as a restart does."""
        result = self.daemon.ctr("task", "start", "-d", "--log-uri", f"file://{self.log_path}",  # type: ignore[attr-defined]
                                 self.task_id, check=False)
        assert result.returncode == 0, result.stderr
        self.wait_ready()

    def wait_ready(self) -> None:
        def healthy() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    return conn.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                return False

        if not wait_until(healthy, timeout=READY_TIMEOUT, interval=0.1):
            raise AssertionError(f"{self.task_id} never became healthy on {self.url}; log:\n{self.log()}\n"
                                 f"tasks:\n{self.daemon.ctr('tasks', 'ls', check=False).stdout}")  # type: ignore[attr-defined]

    @property
    def pid(self) -> int:
        """The task's pid (the instance process), as `ctr tasks ls` shows it."""
        listing = self.daemon.ctr("tasks", "ls", check=False).stdout  # type: ignore[attr-defined]
        for line in listing.splitlines():
            fields = line.split()
            if fields and fields[0] == self.task_id:
                return int(fields[1])
        raise AssertionError(f"task {self.task_id} not listed:\n{listing}")

    def get(self, path: str, *args: str, **kwargs: object) -> Response:
        return curl(self.url + path, *args, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def status(self) -> str:
        listing = self.daemon.ctr("tasks", "ls", check=False).stdout  # type: ignore[attr-defined]
        for line in listing.splitlines():
            fields = line.split()
            if fields and fields[0] == self.task_id:
                return fields[-1]
        return ""

    def stop_task(self, timeout: float = 40.0) -> bool:
        """SIGTERM, wait for the task to stop, delete it. True when SIGTERM was enough (no SIGKILL needed)."""
        self.daemon.ctr("task", "kill", self.task_id, check=False)  # type: ignore[attr-defined]
        by_sigterm = wait_until(lambda: self.status() in ("STOPPED", ""), timeout=timeout, interval=0.1)
        if not by_sigterm:
            self.daemon.ctr("task", "kill", "-s", "SIGKILL", self.task_id, check=False)  # type: ignore[attr-defined]
            wait_until(lambda: self.status() in ("STOPPED", ""), timeout=10)
        self.daemon.ctr("task", "rm", self.task_id, check=False)  # type: ignore[attr-defined]
        return by_sigterm

    def remove(self) -> None:
        """Stop the task if running and delete the container."""
        if self.status():
            self.stop_task()
        self.daemon.ctr("containers", "rm", self.task_id, check=False)  # type: ignore[attr-defined]
        try:
            os.unlink(self.log_path)
            os.rmdir(self.log_path.parent)
        except OSError:
            pass


def run_or_fail(task: HttpTask) -> HttpTask:
    """``task`` running, or the test failed with ctr's error and the container log."""
    result = task.run()
    assert result.returncode == 0, f"ctr run failed: {result.stderr}\nlog:\n{task.log()}"
    return task


@contextlib.contextmanager
def serving(daemon: object, image: str, task_id: str, env: dict[str, str],
            ctr_args: tuple[str, ...] = ()) -> Iterator[HttpTask]:
    """A running HttpTask for a `with` block (a module fixture); removed and leak-checked afterwards."""
    task = run_or_fail(HttpTask(daemon, image, task_id, env=env, ctr_args=ctr_args))
    try:
        yield task
    finally:
        task.remove()
        assert_no_leaks(daemon, [task_id])


class TaskGroup:
    """The tasks a test module starts one at a time and removes together. The leak check runs once, when none is
    left: it looks at every shim process of the daemon, so it would count a sibling still running as a leak."""

    def __init__(self, daemon: object) -> None:
        self.daemon = daemon
        self.tasks: list[HttpTask] = []

    def run(self, task: HttpTask) -> HttpTask:
        self.tasks.append(task)
        return run_or_fail(task)

    def include(self, task_id: str) -> None:
        """A task the test ran and removed itself, still named in the final leak check."""
        self.tasks.append(HttpTask(self.daemon, "", task_id))


@contextlib.contextmanager
def task_group(daemon: object) -> Iterator[TaskGroup]:
    group = TaskGroup(daemon)
    try:
        yield group
    finally:
        for task in group.tasks:
            task.remove()
        assert_no_leaks(daemon, [task.task_id for task in group.tasks])


def wait_for_log(task: HttpTask, needle: str, timeout: float = 10.0) -> bool:
    return wait_until(lambda: needle in task.log(), timeout=timeout, interval=0.1)
