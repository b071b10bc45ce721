"""Spin's Redis trigger through a real containerd: Spin Python SDK 3.4.1 apps (py-redis: a Redis-triggered
component; py-mixed: an HTTP and a Redis component of one app) react to PUBLISH on a real redis-server, keep
their subscription through guest errors and a server restart, exit 0 on SIGTERM, and a bad [[trigger.redis]]
fails `ctr run` at Create with the reason in ctr's error and in the container log."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.http_support import HttpTask, serving, wait_for_log
from tests.e2e.support import RUNTIME, assert_no_leaks, wait_until
from tests.unit.test_redis_trigger import RedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on the host's loopback (the tasks run with --net-host), restartable on its port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ForegroundTask:
    """`ctr run --rm` in the foreground: the task's stdout/stderr are ctr's (the container log), and ctr exits
    with the task's exit status, which is what SIGTERM's outcome is checked by."""

    def __init__(self, daemon, image: str, task_id: str, env: dict[str, str], workdir: Path) -> None:
        self.daemon = daemon
        self.task_id = task_id
        self.stdout_path, self.stderr_path = workdir / f"{task_id}.out", workdir / f"{task_id}.err"
        argv = [str(daemon.bin_dir / "ctr"), "--address", daemon.address, "--namespace", "default",
                "run", "--rm", "--net-host", "--runtime", RUNTIME]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        argv += [image, task_id, "/"]
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=clean_env)

    def log(self) -> str:
        return (self.stdout_path.read_text("utf-8", "replace") + self.stderr_path.read_text("utf-8", "replace"))

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> None:
        if not wait_until(lambda: needle in self.log(), timeout=timeout, interval=0.1):
            raise AssertionError(f"{needle!r} not in the log of {self.task_id}:\n{self.log()}")

    def sigterm(self, timeout: float = 40.0) -> int:
        self.daemon.ctr("task", "kill", self.task_id, check=False)
        return self.process.wait(timeout)

    def remove(self) -> None:
        if self.process.poll() is None:
            self.daemon.ctr("task", "kill", "-s", "SIGKILL", self.task_id, check=False)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.daemon.ctr("task", "rm", "-f", self.task_id, check=False)
        self.daemon.ctr("containers", "rm", self.task_id, check=False)


@pytest.fixture
def py_redis(containerd_21, images_21, http_apps, redis_server, tmp_path):
    """py-redis running in the foreground, subscribed to channel `e2e` of the test's redis-server."""
    image = images_21.wasm_image("py-redis", {"/": http_apps["py-redis"]}, ["/"])
    task_id = f"redis-{os.getpid() % 10_000}-{abs(hash(str(tmp_path))) % 10_000}"
    task = ForegroundTask(containerd_21, image, task_id, {"SPIN_VARIABLE_REDIS_PORT": str(redis_server.port),
                                                          "SPIN_VARIABLE_CHANNEL": "e2e"}, tmp_path)
    try:
        task.wait_for_log("spin: redis trigger: subscribed on redis://127.0.0.1:", timeout=90)
        yield task
    finally:
        task.remove()
        assert_no_leaks(containerd_21, [task_id])


def received(port: int) -> list[bytes]:
    return redis.Redis(port=port).lrange("py-redis:received", 0, -1)


def test_publish_runs_the_component_guest_errors_keep_the_subscription_and_sigterm_exits_0(py_redis, redis_server):
    client = redis.Redis(port=redis_server.port)
    client.delete("py-redis:received")
    assert client.publish("e2e", b"hello from PUBLISH") == 1
    assert wait_until(lambda: received(redis_server.port) == [b"hello from PUBLISH"], timeout=20), py_redis.log()
    py_redis.wait_for_log("py-redis got 18 bytes")  # the guest's stdout is the container's
    for payload in (b"fail", b"trap", b"still here"):
        client.publish("e2e", payload)
    assert wait_until(lambda: received(redis_server.port)[-1:] == [b"still here"], timeout=20), py_redis.log()
    log = py_redis.log()
    assert "spin: py-redis: error: the handler returned error(error) (message on Redis channel 'e2e'" in log
    assert "spin: py-redis: trap: " in log and log.count("the subscription goes on") == 2
    assert py_redis.sigterm() == 0, py_redis.log()


def test_a_restarted_server_is_resubscribed_under_the_running_task(py_redis, redis_server):
    redis_server.stop()
    py_redis.wait_for_log("spin: redis trigger: lost redis://127.0.0.1:")
    redis_server.start()
    py_redis.wait_for_log("spin: redis trigger: resubscribed on redis://127.0.0.1:", timeout=40)
    client = redis.Redis(port=redis_server.port)
    assert client.publish("e2e", b"after the restart") == 1
    assert wait_until(lambda: received(redis_server.port) == [b"after the restart"], timeout=20), py_redis.log()
    assert py_redis.sigterm() == 0, py_redis.log()


def test_a_mixed_http_and_redis_app_serves_both(containerd_21, images_21, http_apps, redis_server):
    image = images_21.wasm_image("py-mixed", {"/": http_apps["py-mixed"]}, ["/"])
    env = {"SPIN_VARIABLE_REDIS_ADDRESS": f"redis://127.0.0.1:{redis_server.port}"}
    with serving(containerd_21, image, "redis-mixed", env) as task:
        assert task.get("/hello").text == "Hello from py-mixed!"
        assert wait_for_log(task, "spin: redis trigger: subscribed on", timeout=30), task.log()
        assert task.get("/last").status == 404
        redis.Redis(port=redis_server.port).publish("mixed", b"published to the mixed app")
        assert wait_until(lambda: task.get("/last").body == b"published to the mixed app", timeout=20), task.log()
        # the triggers forked from a process without threads (runtime.multi_trigger warns otherwise)
        assert "thread(s) running before the triggers fork" not in task.log()
        assert task.stop_task(), "SIGTERM did not stop both triggers"


BAD_TRIGGERS = {
    "no-channel": ('channel = "{{ channel }}"\n', "", "`channel` is required"),
    "no-address": ('[application.trigger.redis]\naddress = "redis://{{ redis_host }}:{{ redis_port }}"\n', "",
                   "no Redis server address"),
    "unknown-component": ('component = "py-redis"\n', 'component = "nope"\n',
                          "references component 'nope', which is not declared"),
    "bad-url": ('address = "redis://{{ redis_host }}:{{ redis_port }}"\n', 'address = "tcp://{{ redis_host }}:1"\n',
                "not a redis:// or rediss:// URL"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRIGGERS))
def test_bad_trigger_config_fails_create_with_the_reason(containerd_21, images_21, http_apps, tmp_path, case):
    old, new, needle = BAD_TRIGGERS[case]
    app_dir = tmp_path / "app"
    shutil.copytree(http_apps["py-redis"], app_dir)
    manifest = (app_dir / "spin.toml").read_text()
    assert old in manifest
    (app_dir / "spin.toml").write_text(manifest.replace(old, new, 1))
    image = images_21.wasm_image(f"py-redis-{case}", {"/": app_dir}, ["/"])
    task = HttpTask(containerd_21, image, f"redis-bad-{case}", env={"SPIN_VARIABLE_REDIS_PORT": "6379"})
    result = task.run(wait_ready=False)
    try:
        assert result.returncode != 0, "ctr run should have failed"
        assert needle in result.stderr, result.stderr
        assert wait_for_log(task, needle), task.log()
    finally:
        task.remove()
    assert_no_leaks(containerd_21, [task.task_id])
