"""The MQTT trigger's app against a real mosquitto and the real py-mqtt component (componentize-py 0.17.2 against
spin-trigger-mqtt's p2 WIT): a message on the trigger's topic runs handle-message(payload, {topic}) with the guest's
Spin services (its answer comes back through outbound MQTT), a guest error or trap is logged and the subscription
goes on, a restarted broker is resubscribed to, interrupt returns 0 and leaves no connection, and bad trigger
config or a component of another world fails the load with the reason."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.errors import AppError
from runtime.loader import load_app
from runtime.mqtt.app import MqttApp
from runtime.settings import RuntimeSettings
from tests.mosquitto_support import Mosquitto, running_mosquitto, subscribed
from tests.unit.test_host_marshal import app_wasm

#: Precompiled blobs survive across runs here (a cold compile of the 36 MB component takes ~7 s).
CACHE_DIR = Path("/var/cache/containerd-shim-spin-test/unit-mqtt-trigger")


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


def copy_py_mqtt(tmp_path: Path) -> Path:
    app_dir = tmp_path / "app"
    shutil.copytree(app_wasm("py-mqtt").parent, app_dir)
    return app_dir


def load_py_mqtt(tmp_path: Path, port: int, topic: str, reply_topic: str) -> MqttApp:
    env = {"SPIN_VARIABLE_MQTT_PORT": str(port), "SPIN_VARIABLE_TOPIC": topic,
           "SPIN_VARIABLE_REPLY_TOPIC": reply_topic}
    app = load_app(copy_py_mqtt(tmp_path), ["/"], env, RuntimeSettings(cache_dir=CACHE_DIR))
    assert isinstance(app, MqttApp)
    return app


class Running:
    """``app.run()`` in a thread, as the instance process runs it on its main thread."""

    def __init__(self, app: MqttApp) -> None:
        self.app = app
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.app.run()

    def subscriptions(self) -> int:
        return sum(s.subscriptions for s in self.app.subscribers)  # type: ignore[attr-defined]

    def stop(self) -> int | None:
        self.app.interrupt()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.code


def publish(broker: Mosquitto, topic: str, *payloads: bytes) -> None:
    """Publish with QoS 1 through a client of the test's own (waits for each PUBACK)."""
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion

    client = Client(CallbackAPIVersion.VERSION2, client_id=f"unit-pub-{time.monotonic_ns()}")
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def connected_since_start(broker: Mosquitto) -> set[str]:
    """Client ids connected now, from the broker's log since it last started (a killed broker logs no
    disconnects, so Mosquitto.connected_clients would still list the clients of before a restart)."""
    log = broker.log_path.read_text(errors="replace")
    since = log[log.rfind(" starting\n"):]
    connected: set[str] = set()
    for line in since.splitlines():
        if joined := re.search(r"New client connected from \S+ as (\S+) \(", line):
            connected.add(joined.group(1))
        if left := re.search(r"Client (\S+) (?:disconnected|closed its connection)", line):
            connected.discard(left.group(1))
    return connected


def test_a_message_runs_the_component_which_answers_through_outbound_mqtt(tmp_path, broker, capfd):
    running = Running(load_py_mqtt(tmp_path, broker.port, "unit/basic", "unit/basic-out"))
    try:
        with subscribed(broker, ("unit/basic-out", 1)) as replies:
            wait_for(lambda: running.subscriptions() == 1, what="the subscription")
            publish(broker, "unit/basic", b"hello \x00\xff", b"second")
            first, second = replies.next(15), replies.next(15)
        assert (first.payload, second.payload) == (b"unit/basic got hello \x00\xff", b"unit/basic got second")
        # the key-value store the guest wrote is the app's default store, in the work dir (the rootfs)
        assert (tmp_path / "app" / ".spin" / "sqlite_key_value.db").is_file()
    finally:
        assert running.stop() == 0
    out, err = capfd.readouterr()
    assert "py-mqtt got 6 bytes on unit/basic" in out
    assert "spin: mqtt trigger: subscribed on mqtt://127.0.0.1:" in err and "'unit/basic' (QoS 1)" in err


def test_a_wildcard_topic_gives_the_guest_each_message_s_own_topic(tmp_path, broker):
    running = Running(load_py_mqtt(tmp_path, broker.port, "unit/wild/+", "unit/wild-out"))
    try:
        with subscribed(broker, ("unit/wild-out", 1)) as replies:
            wait_for(lambda: running.subscriptions() == 1, what="the subscription")
            publish(broker, "unit/wild/a", b"1")
            publish(broker, "unit/wild/b", b"2")
            assert {replies.next(15).payload, replies.next(15).payload} == {b"unit/wild/a got 1", b"unit/wild/b got 2"}
    finally:
        assert running.stop() == 0


def test_guest_error_and_trap_are_logged_and_the_subscription_goes_on(tmp_path, broker, capfd):
    running = Running(load_py_mqtt(tmp_path, broker.port, "unit/errors", "unit/errors-out"))
    try:
        with subscribed(broker, ("unit/errors-out", 1)) as replies:
            wait_for(lambda: running.subscriptions() == 1, what="the subscription")
            publish(broker, "unit/errors", b"fail", b"trap", b"after")
            assert replies.next(15).payload == b"unit/errors got after"
            assert replies.nothing_within(0.5)
    finally:
        assert running.stop() == 0
    err = capfd.readouterr().err
    assert ("spin: py-mqtt: error: the handler returned error(py-mqtt was asked to fail) (message on MQTT topic "
            "'unit/errors' of mqtt://127.0.0.1:") in err
    expected = "spin: py-mqtt: trap: wasm `unreachable` instruction executed (message on MQTT topic 'unit/errors'"
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z " + re.escape(expected), err, re.M), err
    assert err.count("the subscription goes on") == 2
    assert running.app.subscribers[0].failures == 2  # type: ignore[attr-defined]


def test_a_restarted_broker_is_resubscribed(tmp_path, capfd):
    with running_mosquitto(tmp_path / "restarting") as own:
        running = Running(load_py_mqtt(tmp_path, own.port, "unit/restart", "unit/restart-out"))
        try:
            wait_for(lambda: running.subscriptions() == 1, what="the subscription")
            own.restart(down_for=1.0)  # at least one failed attempt while it is down
            wait_for(lambda: running.subscriptions() == 2, timeout=30, what="the resubscription")
            with subscribed(own, ("unit/restart-out", 1)) as replies:
                publish(own, "unit/restart", b"after restart")
                assert replies.next(15).payload == b"unit/restart got after restart"
        finally:
            assert running.stop() == 0
        # interrupt disconnected the trigger's client (and the guest closed its outbound one)
        wait_for(lambda: not connected_since_start(own), what="no client left connected")
    err = capfd.readouterr().err
    assert "spin: mqtt trigger: lost mqtt://127.0.0.1:" in err and "retrying in 0.5 s" in err
    assert re.search(r"resubscribed on mqtt://127\.0\.0\.1:\d+ after [\d.]+ s", err), err


def test_interrupt_before_run_returns_0_without_connecting(tmp_path, broker):
    app = load_py_mqtt(tmp_path, broker.port, "unit/never", "unit/never-out")
    app.interrupt()
    assert app.run() == 0
    assert app.subscribers[0].subscriptions == 0  # type: ignore[attr-defined]


def _edit_manifest(app_dir: Path, old: str, new: str) -> None:
    manifest = app_dir / "spin.toml"
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('qos = "1"', 'qos = "3"', '`qos` must be "0", "1" or "2"'),
    ('qos = "1"', 'qos = "1"\ntopc = "x"', "unknown key(s) 'topc' (did you mean `topic`?)"),
    ('keep_alive_interval = "30"\n', "", "`keep_alive_interval` is required"),
    ('address = "mqtt://', 'address = "mqtts://', "mqtts:// brokers are not supported by this shim"),
    ('topic = "{{ topic }}"', 'topic = "a/#/b"', "'#' must be a whole level, and the last one"),
    ('topic = "{{ topic }}"', 'topic = "{{ nope }}"', "`topic`"),
])
def test_bad_trigger_config_fails_the_load_with_the_reason(tmp_path, old, new, message):
    app_dir = copy_py_mqtt(tmp_path)
    _edit_manifest(app_dir, old, new)
    with pytest.raises(AppError) as caught:
        load_app(app_dir, ["/"], {"SPIN_VARIABLE_MQTT_PORT": "1883"}, RuntimeSettings(cache_dir=CACHE_DIR))
    assert message in str(caught.value)
    assert "[application.trigger.mqtt]" in str(caught.value) or "[[trigger.mqtt]]" in str(caught.value)


def test_a_component_of_another_world_is_refused_at_load_alike_cold_and_warm(tmp_path):
    """Cold: refused from its export names before a compile. Warm: the same wasm compiled and cached before (as
    another app's Redis component), so the load finds it in the cache; the refusal must read the same."""
    app_dir = copy_py_mqtt(tmp_path)
    shutil.copyfile(app_wasm("py-redis"), app_dir / "app.wasm")  # exports fermyon:spin/inbound-redis
    settings = RuntimeSettings(cache_dir=tmp_path / "cache")
    expected = ("component 'py-mqtt' (app.wasm): not an MQTT component: it exports `exports`, "
                "`fermyon:spin/inbound-redis`, not `handle-message` (a [[trigger.mqtt]] component implements "
                "spin-trigger-mqtt's spin-mqtt world)")
    with pytest.raises(AppError) as cold:
        load_app(app_dir, ["/"], {"SPIN_VARIABLE_MQTT_PORT": "1883"}, settings)
    assert str(cold.value) == expected
    assert not any((tmp_path / "cache").rglob("*.cwasm")), "refused before a compile: nothing cached"

    from runtime.compiled import compile_wasm

    _, load, _ = compile_wasm(app_dir / "app.wasm", "py-redis", "py-redis", settings)  # no trigger's requirement
    assert load.cache.outcome == "compiled"
    with pytest.raises(AppError) as warm:
        load_app(app_dir, ["/"], {"SPIN_VARIABLE_MQTT_PORT": "1883"}, settings)
    assert str(warm.value) == expected


def test_a_spin_mqtt_trigger_3_component_is_refused_at_load_as_wasip3(tmp_path):
    """spin-trigger-mqtt's newest world makes handle-message async: refused before its compile, saying why."""
    app_dir = tmp_path / "app"
    shutil.copytree(app_wasm("py-mqtt-p3").parent, app_dir)
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        load_app(app_dir, ["/"], {}, RuntimeSettings(cache_dir=tmp_path / "cache"))
    message = str(caught.value)
    assert "component 'py-mqtt-p3' (app.wasm): is a WASIp3 (component-model async) component" in message
    assert "async function type(s)" in message
    assert time.monotonic() - started < 5.0  # no compile of the 20 MB component (that takes ~7 s)
