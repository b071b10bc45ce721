"""Spin's outbound MQTT from a Spin Python SDK 3.4.1 app (`spin_sdk.mqtt`) through containerd, against a real
mosquitto from Debian on loopback: publishes at QoS 0/1/2 that a test subscriber receives, username/password
logins, a host not in allowed_outbound_hosts, and a broker that is down (an error to the guest while the app keeps
serving).

py-spin's spin.toml allows `mqtt://127.0.0.1:*`; tests/apps/src/py-spin/mqtt_routes.py serves `POST /mqtt`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.mosquitto_support import PASSWORD, USERNAME, Mosquitto, running_mosquitto, subscribed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps) -> Iterator[HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with serving(containerd_21, image, "mqtt-apis", {"SPIN_VARIABLE_API_TOKEN": "unused"}) as task:
        yield task


def _publish(app: HttpTask, payload: bytes, **query: object) -> tuple[int, str]:
    response = app.get(f"/mqtt?{urlencode(query)}", "-X", "POST", data=payload)
    return response.status, response.text


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_guest_publish_reaches_a_subscriber(app, broker, qos: int):
    with subscribed(broker, ("from-guest/#", 2)) as subscriber:
        status, text = _publish(app, b"Eureka! \x00\xff", address=broker.url(f"guest-{qos}"),
                                topic=f"from-guest/{qos}", qos=qos, count=3)
        assert (status, text) == (200, "published 3"), app.log_path.read_text()[-3000:]
        received = [subscriber.next() for _ in range(3)]
    assert {(m.topic, m.payload, m.qos) for m in received} == {(f"from-guest/{qos}", b"Eureka! \x00\xff", qos)}


def test_username_and_password_reach_the_broker_and_are_never_shown(app, broker):
    with subscribed(broker, ("secured", 1)) as subscriber:
        status, text = _publish(app, b"with login", address=broker.url("login", port=broker.auth_port),
                                topic="secured", qos=1, username=USERNAME, password=PASSWORD)
        assert (status, text) == (200, "published 1")
        assert subscriber.next().payload == b"with login"
    status, text = _publish(app, b"x", address=broker.url("bad-login", port=broker.auth_port), topic="secured",
                            qos=1, username=USERNAME, password="wrong-pw-123")
    assert status == 500 and text.startswith("ERROR: Error_ConnectionFailed(value=")
    assert "refused" in text and "wrong-pw-123" not in text
    assert PASSWORD not in app.log_path.read_text() and "wrong-pw-123" not in app.log_path.read_text()


def test_a_host_not_in_allowed_outbound_hosts_is_not_permitted(app, broker):
    address = broker.url("denied", host="localhost")
    status, text = _publish(app, b"x", address=address, topic="t", qos=1)
    assert (status, text) == (500, f"ERROR: Error_ConnectionFailed(value='address {address} is not permitted')")
    status, text = _publish(app, b"x", address=f"mqtt://127.0.0.1:{broker.port}", topic="t", qos=1)
    assert (status, text) == (500, "ERROR: Error_InvalidAddress()")  # no client_id, as rumqttc requires


def test_a_broker_that_is_down_is_an_error_and_the_app_keeps_serving(app, broker, tmp_path: Path):
    with running_mosquitto(tmp_path / "stopped") as stopped:
        pass  # stopped: nothing listens on its port now
    status, text = _publish(app, b"x", address=stopped.url("down"), topic="t", qos=1)
    assert status == 500 and text.startswith("ERROR: Error_ConnectionFailed(value=")
    assert "Connection refused" in text
    assert app.get("/hello").text == "Hello from Python!"
    with subscribed(broker, ("after", 0)) as subscriber:
        assert _publish(app, b"still here", address=broker.url("after"), topic="after", qos=0) == (200, "published 1")
        assert subscriber.next().payload == b"still here"
