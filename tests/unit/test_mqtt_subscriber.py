"""The MQTT trigger's subscriber against a real mosquitto: messages delivered with their topic and QoS, handler
failures logged without ending the subscription, a login from the password file, reconnection with back-off
after a broker restart, a broker that comes up late, and a clean stop that finishes the message in flight."""

from __future__ import annotations

import re
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.mqtt.subscriber import MqttMessage, Subscriber, backoff_delay
from runtime.mqtt.trigger_config import BrokerSettings, Subscription
from tests.mosquitto_support import PASSWORD, USERNAME, Mosquitto, running_mosquitto


def _publish(broker: Mosquitto, topic: str, payload: bytes, qos: int = 1, port: int | None = None) -> None:
    import paho.mqtt.publish

    paho.mqtt.publish.single(topic, payload, qos=qos, hostname=broker.host, port=port or broker.port)


class Running:
    """A Subscriber in a thread, its log lines and the messages its handler saw."""

    def __init__(self, broker: Mosquitto, topics: list[tuple[str, int]], *, port: int | None = None,
                 username: str = "", password: str = "", handler=None) -> None:
        settings = BrokerSettings(f"mqtt://{broker.host}:{port or broker.port}", broker.host, port or broker.port,
                                  username, password, keep_alive_s=5)
        self.seen: queue.Queue[MqttMessage] = queue.Queue()
        self.lines: list[str] = []
        self.stop = threading.Event()

        def record(message: MqttMessage) -> str | None:
            self.seen.put(message)
            return handler(message) if handler else None

        self.subscriber = Subscriber(Subscription(settings, tuple(topics)), record, self.stop, log=self.lines.append)
        self.thread = threading.Thread(target=self.subscriber.run, daemon=True)
        self.thread.start()

    def wait_subscribed(self, count: int = 1, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.subscriber.subscriptions < count:
            assert time.monotonic() < deadline, self.lines
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


def test_messages_reach_the_handler_with_topic_payload_and_qos(broker: Mosquitto):
    running = Running(broker, [("orders/+", 1), ("alerts/#", 2), ("raw", 0)])
    try:
        running.wait_subscribed()
        assert running.lines == [f"spin: mqtt trigger: subscribed on mqtt://127.0.0.1:{broker.port}: "
                                 "'orders/+' (QoS 1), 'alerts/#' (QoS 2), 'raw' (QoS 0)"]
        _publish(broker, "orders/42", b"\x00order\xff", qos=1)
        _publish(broker, "alerts/fire/now", b"alert", qos=2)
        _publish(broker, "raw", b"zero", qos=0)
        _publish(broker, "elsewhere", b"not subscribed", qos=1)
        got = [running.seen.get(timeout=10) for _ in range(3)]
        with pytest.raises(queue.Empty):  # 'elsewhere' matches no filter
            running.seen.get(timeout=0.3)
    finally:
        running.close()
    # MQTT orders messages per topic and QoS only: a QoS 2 delivery (PUBREC/PUBREL first) may come after a QoS 0 one
    assert sorted(got, key=lambda m: m.topic) == [MqttMessage("alerts/fire/now", b"alert", 2, False),
                                                  MqttMessage("orders/42", b"\x00order\xff", 1, False),
                                                  MqttMessage("raw", b"zero", 0, False)]
    assert running.subscriber.messages == 3


def test_a_failing_handler_is_logged_and_the_next_message_is_handled(broker: Mosquitto):
    running = Running(broker, [("flaky", 1)], handler=lambda m: "guest returned an error: boom" if m.payload == b"bad"
                      else (_ for _ in ()).throw(RuntimeError("host bug")) if m.payload == b"raise" else None)
    try:
        running.wait_subscribed()
        for payload in (b"bad", b"raise", b"good"):
            _publish(broker, "flaky", payload)
        assert [running.seen.get(timeout=10).payload for _ in range(3)] == [b"bad", b"raise", b"good"]
    finally:
        running.close()
    assert running.subscriber.failures == 2
    # timestamped as the HTTP trigger's request failures are
    expected = "guest returned an error: boom (message on MQTT topic 'flaky' of mqtt://127.0.0.1:"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z " + re.escape(expected), running.lines[1]), running.lines
    assert "handler failed: host bug" in running.lines[2] and running.lines[2].endswith("the subscription goes on")


def test_username_and_password_from_the_settings_log_in_and_a_refusal_is_retried(broker: Mosquitto):
    running = Running(broker, [("secure", 1)], port=broker.auth_port, username=USERNAME, password=PASSWORD)
    try:
        running.wait_subscribed()
        _publish(broker, "secure", b"hello")
        assert running.seen.get(timeout=10).payload == b"hello"
    finally:
        running.close()
    refused = Running(broker, [("secure", 1)], port=broker.auth_port, username=USERNAME, password="wrong-pw-77")
    time.sleep(1.2)
    refused.close()
    assert refused.subscriber.subscriptions == 0 and len(refused.lines) >= 2
    assert "cannot subscribe on" in refused.lines[0] and "refused the connection: Not authorized" in refused.lines[0]
    assert "retrying in 0.5 s" in refused.lines[0] and "retrying in 1.0 s" in refused.lines[1]
    assert not [line for line in refused.lines if "wrong-pw-77" in line]


def test_it_reconnects_and_resubscribes_after_the_broker_restarts(tmp_path: Path):
    with running_mosquitto(tmp_path / "restarting") as broker:
        running = Running(broker, [("events", 1)])
        try:
            running.wait_subscribed()
            _publish(broker, "events", b"before")
            assert running.seen.get(timeout=10).payload == b"before"
            broker.restart(down_for=1.0)
            running.wait_subscribed(2, timeout=30)
            _publish(broker, "events", b"after")
            assert running.seen.get(timeout=10).payload == b"after"
        finally:
            running.close()
    assert any(line.startswith(f"spin: mqtt trigger: lost mqtt://127.0.0.1:{broker.port}: ")
               and "retrying in 0.5 s" in line for line in running.lines), running.lines
    assert any("resubscribed on" in line for line in running.lines), running.lines


def test_a_broker_that_starts_late_is_waited_for(tmp_path: Path):
    late = Mosquitto(tmp_path / "late")
    late.start()
    late.stop()  # its ports are known now; nothing listens yet
    running = Running(late, [("late", 0)])
    try:
        time.sleep(0.8)
        assert running.subscriber.subscriptions == 0 and "Connection refused" in running.lines[0]
        late.start()
        running.wait_subscribed(timeout=30)
        _publish(late, "late", b"finally", qos=0)
        assert running.seen.get(timeout=10).payload == b"finally"
    finally:
        running.close()
        late.stop()


def test_stop_finishes_the_message_in_flight_acknowledges_it_and_disconnects(broker: Mosquitto):
    started, release = threading.Event(), threading.Event()
    finished: list[bytes] = []

    def slow(message: MqttMessage) -> None:
        started.set()
        release.wait(10)
        finished.append(message.payload)

    running = Running(broker, [("slow", 1)], handler=slow)
    running.wait_subscribed()
    _publish(broker, "slow", b"in flight")
    assert started.wait(10)
    running.stop.set()
    time.sleep(0.3)
    assert running.thread.is_alive() and not finished  # still handling: stop waits for it
    release.set()
    running.thread.join(10)
    assert not running.thread.is_alive() and finished == [b"in flight"]

    def acknowledged_then_disconnected() -> bool:
        log = broker.log_path.read_text()
        session = log[log.rindex("Sending SUBACK"):]  # the broker logs as it goes: wait for it to catch up
        return "Received PUBACK from" in session and "Received DISCONNECT from" in session

    deadline = time.monotonic() + 5
    while not acknowledged_then_disconnected():
        assert time.monotonic() < deadline, broker.log_path.read_text()[-2000:]
        time.sleep(0.05)


def test_a_stop_while_waiting_to_retry_returns_at_once(tmp_path: Path):
    gone = Mosquitto(tmp_path / "gone")
    gone.start()
    gone.stop()
    running = Running(gone, [("x", 0)])
    time.sleep(0.3)
    started = time.monotonic()
    running.close()
    assert time.monotonic() - started < 1.0


def test_backoff_doubles_to_thirty_seconds():
    assert [backoff_delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
