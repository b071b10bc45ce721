"""The Redis trigger's message loop against a real redis-server and the real py-redis component (Spin Python SDK
3.4.1): a PUBLISH runs handle-message with the guest's Spin services, a guest error or trap is logged and the
subscription goes on, a restarted server is resubscribed to, and a stop lets the message in flight finish."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from runtime.loader import load_app
from runtime.redis_trigger.app import RedisApp
from runtime.redis_trigger.config import Subscription
from runtime.redis_trigger.executor import MessageOutcome
from runtime.redis_trigger.subscriber import Subscriber, backoff_delay
from runtime.settings import RuntimeSettings
from tests.redis_support import _answers, _free_port, running_redis
from tests.unit.test_host_marshal import app_wasm

#: Precompiled blobs survive across runs here (a cold compile of the 36 MB component takes ~10 s).
CACHE_DIR = Path("/var/cache/containerd-shim-spin-test/unit-redis-trigger")


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RedisServer:
    """redis-server on a fixed port that a test can stop and start again (running_redis picks a new port)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port("127.0.0.1")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed; run scripts/setup.sh")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers("127.0.0.1", self.port), what="redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_redis(tmp_path_factory.mktemp("redis")) as port:
        yield port


def load_py_redis(tmp_path: Path, port: int, channel: str = "messages") -> RedisApp:
    app_dir = tmp_path / "app"
    shutil.copytree(app_wasm("py-redis").parent, app_dir)
    env = {"SPIN_VARIABLE_REDIS_PORT": str(port), "SPIN_VARIABLE_CHANNEL": channel}
    app = load_app(app_dir, ["/"], env, RuntimeSettings(cache_dir=CACHE_DIR))
    assert isinstance(app, RedisApp)
    return app


class Running:
    """``app.run()`` in a thread, as the instance process runs it on its main thread."""

    def __init__(self, app: RedisApp) -> None:
        self.app = app
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.app.run()

    def stop(self) -> int | None:
        self.app.interrupt()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.code


def subscribed(client: redis.Redis, channel: str) -> Callable[[], bool]:
    return lambda: client.pubsub_numsub(channel)[0][1] > 0


def test_publish_runs_the_component_with_its_spin_services(tmp_path, redis_port, capfd):
    client = redis.Redis(port=redis_port)
    client.delete("py-redis:received")
    app = load_py_redis(tmp_path, redis_port, channel="unit-basic")
    running = Running(app)
    try:
        wait_for(subscribed(client, "unit-basic"), what="the subscription")
        client.publish("unit-basic", b"hello \x00\xff")
        client.publish("unit-basic", b"second")
        wait_for(lambda: client.llen("py-redis:received") == 2, what="the guest's RPUSH")
        assert client.lrange("py-redis:received", 0, -1) == [b"hello \x00\xff", b"second"]
        # the key-value store the guest wrote is the app's default store, in the work dir (the rootfs)
        assert (tmp_path / "app" / ".spin" / "sqlite_key_value.db").is_file()
    finally:
        assert running.stop() == 0
    out, err = capfd.readouterr()
    assert "py-redis got 6 bytes" in out
    assert "subscribed on redis://127.0.0.1:" in err and "'unit-basic' -> py-redis" in err


def test_guest_error_and_trap_are_logged_and_the_subscription_goes_on(tmp_path, redis_port, capfd):
    client = redis.Redis(port=redis_port)
    client.delete("py-redis:received")
    running = Running(load_py_redis(tmp_path, redis_port, channel="unit-errors"))
    try:
        wait_for(subscribed(client, "unit-errors"), what="the subscription")
        for payload in (b"fail", b"trap", b"after"):
            client.publish("unit-errors", payload)
        wait_for(lambda: client.lrange("py-redis:received", 0, -1) == [b"after"], what="the message after the errors")
    finally:
        assert running.stop() == 0
    err = capfd.readouterr().err
    # timestamped as the HTTP trigger's request failures are
    expected = "spin: py-redis: error: the handler returned error(error) (message on Redis channel 'unit-errors'"
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z " + re.escape(expected), err, re.M), err
    assert "spin: py-redis: trap: wasm `unreachable` instruction executed (message on Redis channel 'unit-errors'" in err
    assert err.count("the subscription goes on") == 2


def test_a_restarted_server_is_resubscribed(tmp_path, capfd):
    server = RedisServer(tmp_path)
    server.start()
    try:
        running = Running(load_py_redis(tmp_path, server.port, channel="unit-restart"))
        try:
            client = redis.Redis(port=server.port)
            wait_for(subscribed(client, "unit-restart"), what="the subscription")
            server.stop()
            time.sleep(1.0)  # at least one failed attempt while it is down
            server.start()
            client = redis.Redis(port=server.port)
            wait_for(subscribed(client, "unit-restart"), timeout=30, what="the resubscription")
            client.publish("unit-restart", b"after restart")
            wait_for(lambda: client.lrange("py-redis:received", 0, -1) == [b"after restart"], what="the message")
        finally:
            assert running.stop() == 0
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "spin: redis trigger: lost redis://127.0.0.1:" in err and "retrying in 0.5 s" in err
    assert "resubscribed on redis://127.0.0.1:" in err


def test_backoff_doubles_up_to_its_cap():
    assert [backoff_delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(10_000) == 30.0


def test_stop_finishes_the_message_in_flight_then_returns(redis_port):
    """The loop itself, with a Python handler standing in for a guest that takes a while."""
    started, finished = threading.Event(), threading.Event()

    def slow(payload: bytes) -> MessageOutcome:
        started.set()
        time.sleep(1.0)
        finished.set()
        return MessageOutcome("slow")

    stop = threading.Event()
    lines: list[str] = []
    subscription = Subscription(f"redis://127.0.0.1:{redis_port}", {"unit-drain": ("slow",)})
    subscriber = Subscriber(subscription, {"slow": slow}, stop, log=lines.append)
    thread = threading.Thread(target=subscriber.run, daemon=True)
    thread.start()
    try:
        client = redis.Redis(port=redis_port)
        wait_for(lambda: any("subscribed on" in line for line in lines), what="the subscription")
        client.publish("unit-drain", b"x")
        assert started.wait(10), lines
    finally:
        stop.set()
    thread.join(10)
    assert finished.is_set() and not thread.is_alive()
    assert subscriber.messages == 1 and subscriber.failures == 0
    wait_for(lambda: not subscribed(client, "unit-drain")(), what="the connection to close")


def test_an_unreachable_server_is_retried_until_stopped():
    stop = threading.Event()
    lines: list[str] = []
    port = _free_port("127.0.0.1")  # nothing listens there
    subscriber = Subscriber(Subscription(f"redis://127.0.0.1:{port}", {"c": ("a",)}), {}, stop, log=lines.append)
    thread = threading.Thread(target=subscriber.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(lines) >= 2, what="two attempts")
    finally:
        stop.set()
    thread.join(40)
    assert not thread.is_alive()
    assert lines[0].startswith(f"spin: redis trigger: cannot subscribe on redis://127.0.0.1:{port}: ")
    assert "retrying in 0.5 s" in lines[0] and "retrying in 1.0 s" in lines[1]


class SlowHandler:
    """Stands in for a RedisExecutor whose guest takes ``seconds`` per message."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()

    def handle_message(self, payload: bytes) -> MessageOutcome:
        self.started.set()
        time.sleep(self.seconds)
        return MessageOutcome("slow")


def test_a_handler_still_running_after_the_drain_grace_ends_the_run_with_143(redis_port, capfd):
    handler = SlowHandler(5.0)
    subscription = Subscription(f"redis://127.0.0.1:{redis_port}", {"unit-grace": ("slow",)})
    app = RedisApp(description="slow", loads=(), staged=[], subscriptions=[subscription],
                   executors={"slow": handler}, drain_grace=0.5)  # type: ignore[dict-item]
    running = Running(app)
    client = redis.Redis(port=redis_port)
    wait_for(lambda: app.subscribers and app.subscribers[0].subscriptions == 1, what="the confirmed subscription")
    client.publish("unit-grace", b"x")
    assert handler.started.wait(10)
    started = time.monotonic()
    assert running.stop() == 143
    assert time.monotonic() - started < 3.0  # the grace, not the handler's 5 s
    assert "spin: redis trigger: a message handler was still running 0.5 s after SIGTERM" in capfd.readouterr().err


def test_interrupt_before_run_returns_0_without_subscribing(redis_port):
    subscription = Subscription(f"redis://127.0.0.1:{redis_port}", {"unit-never": ("slow",)})
    app = RedisApp(description="never", loads=(), staged=[], subscriptions=[subscription],
                   executors={"slow": SlowHandler(0)})  # type: ignore[dict-item]
    app.interrupt()
    assert app.run() == 0
    assert redis.Redis(port=redis_port).pubsub_numsub("unit-never")[0][1] == 0
