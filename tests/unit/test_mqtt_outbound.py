"""fermyon:spin/mqtt@2.0.0 as the guest calls it, against a real mosquitto: QoS 0/1/2 publishes a test subscriber
receives, Spin's errors (address not allowed, invalid addresses, a refused login, a broker that is down), the
password never shown, and connections closed when dropped or when the request ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.host.values import Err, Ok, Variant
from runtime.manifest import parse_manifest
from runtime.spin.mqtt_outbound import MqttError, masked, parse_address
from runtime.spin.services import SpinServices
from tests.mosquitto_support import PASSWORD, USERNAME, Mosquitto, running_mosquitto, subscribed
from tests.unit.test_spin_bindings import call, context, rep_of

MQTT = "fermyon:spin/mqtt@2.0.0"

MANIFEST = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["mqtt://127.0.0.1:*"]
[component.other]
source = "other.wasm"
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture
def services(tmp_path: Path) -> SpinServices:
    return SpinServices.build(parse_manifest(MANIFEST, tmp_path / "spin.toml"), {}, work_dir=tmp_path)


def open_(ctx, address: str, username: str = "", password: str = "", keep_alive: int = 30):
    return call(MQTT, "[static]connection.open", ctx, address, username, password, keep_alive)


def publish(ctx, rep: int, topic: str, payload: bytes, qos: str = "at-least-once"):
    return call(MQTT, "[method]connection.publish", ctx, rep, topic, payload, qos)


def finish(ctx) -> None:
    for cleanup in ctx.cleanups:
        cleanup()


@pytest.mark.parametrize("qos", ["at-most-once", "at-least-once", "exactly-once"])
def test_publish_at_each_qos_reaches_a_subscriber(services: SpinServices, broker: Mosquitto, qos: str):
    level = {"at-most-once": 0, "at-least-once": 1, "exactly-once": 2}[qos]
    with subscribed(broker, ("telemetry/#", 2)) as subscriber:
        ctx = context(services)
        conn = rep_of(open_(ctx, broker.url(f"qos-{level}")))
        assert publish(ctx, conn, f"telemetry/{level}", b"Eureka!\x00\xff", qos) == Ok(None)
        assert publish(ctx, conn, f"telemetry/{level}", b"second", qos) == Ok(None)
        first, second = subscriber.next(), subscriber.next()
        finish(ctx)
    assert (first.topic, first.payload, first.qos) == (f"telemetry/{level}", b"Eureka!\x00\xff", level)
    assert second.payload == b"second"


def test_qos_1_and_2_return_after_the_brokers_acknowledgement(services: SpinServices, broker: Mosquitto):
    """Spin's publish waits for PUBACK (QoS 1) / PUBCOMP (QoS 2): by then the broker logged the whole exchange."""
    ctx = context(services)
    conn = rep_of(open_(ctx, broker.url("acks")))
    assert publish(ctx, conn, "acks/1", b"x", "at-least-once") == Ok(None)
    assert publish(ctx, conn, "acks/2", b"y", "exactly-once") == Ok(None)
    log = broker.log_path.read_text()
    assert "Sending PUBACK to acks" in log and "Sending PUBCOMP to acks" in log
    finish(ctx)


def test_username_and_password_log_in_and_a_wrong_password_is_connection_failed(services: SpinServices,
                                                                                  broker: Mosquitto):
    with subscribed(broker, ("auth/#", 1)) as subscriber:
        ctx = context(services)
        conn = rep_of(open_(ctx, broker.url("auth-ok", port=broker.auth_port), USERNAME, PASSWORD))
        assert publish(ctx, conn, "auth/ok", b"logged in") == Ok(None)
        assert subscriber.next().payload == b"logged in"
    wrong = rep_of(open_(ctx, broker.url("auth-bad", port=broker.auth_port), USERNAME, "not-the-password"))
    failed = publish(ctx, wrong, "auth/bad", b"never")
    assert isinstance(failed, Err) and failed.value.tag == "connection-failed"
    assert "refused" in failed.value.payload and "authorized" in failed.value.payload.lower()
    assert "not-the-password" not in failed.value.payload and PASSWORD not in failed.value.payload
    anonymous = rep_of(open_(ctx, broker.url("auth-anon", port=broker.auth_port)))
    assert publish(ctx, anonymous, "auth/anon", b"never").value.tag == "connection-failed"
    finish(ctx)


def test_a_broker_that_is_down_is_connection_failed_at_publish(services: SpinServices, tmp_path: Path):
    with running_mosquitto(tmp_path / "gone") as stopped:
        pass  # stopped again: nothing listens on its ports now
    ctx = context(services)
    address = f"mqtt://user:hunter2@127.0.0.1:{stopped.port}?client_id=down"
    conn = rep_of(open_(ctx, address, "user", "hunter2"))  # as in Spin: open does not connect
    failed = publish(ctx, conn, "t", b"x")
    assert isinstance(failed, Err) and failed.value.tag == "connection-failed"
    assert "Connection refused" in failed.value.payload
    assert "hunter2" not in failed.value.payload and "user:***@127.0.0.1" in failed.value.payload
    assert not [n for n in ctx.notes if "hunter2" in n]
    finish(ctx)


def test_addresses_not_allowed_are_spins_connection_failed(services: SpinServices, broker: Mosquitto):
    for address in (broker.url(host="localhost"), broker.url(host="127.0.0.2"), "mqtt://u:pw@mqtt.test?client_id=a"):
        result = open_(context(services), address, "u", "pw")
        assert isinstance(result, Err) and result.value.tag == "connection-failed", address
        assert result.value.payload == f"address {masked(address)} is not permitted"
        assert ":pw@" not in result.value.payload
    other = open_(context(services, "other"), broker.url())
    assert other == Err(Variant("connection-failed", f"address {broker.url()} is not permitted"))


def test_addresses_rumqttc_rejects_are_invalid_address(services: SpinServices, broker: Mosquitto):
    base = f"mqtt://127.0.0.1:{broker.port}"
    for address in (base, f"{base}?client_id=a&colour=blue", f"{base}?client_id=a&clean_session=yes",
                    f"{base}?client_id=a&inflight_num=70000", f"{base}?client_id=a&keep_alive_secs=-1"):
        assert open_(context(services), address) == Err(Variant("invalid-address", None)), address
    ok = f"{base}?client_id=a&clean_session=false&keep_alive_secs=10&conn_timeout_secs=2"
    assert isinstance(open_(context(services), ok), Ok)
    assert parse_address(ok).clean_session is False and parse_address(ok).connect_timeout == 2.0
    with pytest.raises(MqttError, match="TLS"):
        parse_address("mqtts://127.0.0.1?client_id=a")


def test_invalid_topics_are_other(services: SpinServices, broker: Mosquitto):
    ctx = context(services)
    conn = rep_of(open_(ctx, broker.url("topics")))
    for topic in ("", "a/+/b", "a/#"):
        result = publish(ctx, conn, topic, b"x")
        assert isinstance(result, Err) and result.value.tag == "other", topic
    assert publish(ctx, conn, "fine/after/errors", b"x") == Ok(None)
    finish(ctx)


def test_publish_is_bounded_by_the_requests_deadline(services: SpinServices):
    """A listener that accepts and never answers: the CONNACK wait ends at the deadline, not after rumqttc's 5 s."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        ctx = context(services)
        ctx.deadline = time.monotonic() + 0.5
        conn = rep_of(open_(ctx, f"mqtt://127.0.0.1:{silent.getsockname()[1]}?client_id=slow"))
        started = time.monotonic()
        failed = publish(ctx, conn, "t", b"x")
        elapsed = time.monotonic() - started
        finish(ctx)
    assert failed.value.tag == "connection-failed" and "timed out" in failed.value.payload
    assert 0.3 < elapsed < 1.5


def test_a_connection_reconnects_after_the_broker_restarted(services: SpinServices, tmp_path: Path):
    with running_mosquitto(tmp_path / "restart") as broker:
        ctx = context(services)
        conn = rep_of(open_(ctx, broker.url("again")))
        assert publish(ctx, conn, "r", b"1") == Ok(None)
        broker.restart()
        lost = publish(ctx, conn, "r", b"2", "at-least-once")  # the old connection's end is seen here
        assert lost.value.tag == "connection-failed" and "connection was lost" in lost.value.payload
        assert publish(ctx, conn, "r", b"3", "at-least-once") == Ok(None)  # and the next one connects again
        finish(ctx)


def test_connections_are_closed_when_dropped_or_when_the_request_ends(services: SpinServices, tmp_path: Path):
    from runtime.spin.bindings import mqtt as bindings

    with running_mosquitto(tmp_path / "count") as broker:
        ctx = context(services)
        conns = [rep_of(open_(ctx, broker.url(f"c{i}"))) for i in range(3)]
        for rep in conns:
            assert publish(ctx, rep, "count", b"x") == Ok(None)
        _wait_for(lambda: broker.connected_clients() == {"c0", "c1", "c2"})
        bindings._released(ctx, ctx.table.take(conns[0], bindings.GuestMqtt))
        _wait_for(lambda: broker.connected_clients() == {"c1", "c2"})
        finish(ctx)
        _wait_for(lambda: broker.connected_clients() == set())
        assert "Received DISCONNECT from c1" in broker.log_path.read_text()  # a clean end, not a dropped socket


def test_open_connections_are_bounded_per_instance(services: SpinServices, broker: Mosquitto,
                                                   monkeypatch: pytest.MonkeyPatch):
    from runtime.spin.bindings import mqtt as bindings

    monkeypatch.setattr(bindings, "MAX_OPEN_CONNECTIONS_PER_INSTANCE", 4)
    ctx = context(services)
    for _ in range(4):
        rep_of(open_(ctx, broker.url()))
    assert open_(ctx, broker.url()) == Err(Variant("too-many-connections", None))
    finish(ctx)
    assert isinstance(open_(ctx, broker.url()), Ok)


def test_masking_hides_every_password_form():
    assert masked("mqtt://u:pw@h:1883?client_id=a") == "mqtt://u:***@h:1883?client_id=a"
    assert masked("mqtt://u:p/w#x@h?client_id=a") == "mqtt://u:***@h?client_id=a"
    assert masked("mqtt://h:1883?client_id=me@home") == "mqtt://h:1883?client_id=me@home"
    assert masked("mqtt://onlyuser@h?client_id=a") == "mqtt://onlyuser@h?client_id=a"


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
