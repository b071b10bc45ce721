"""Spin's MQTT trigger through a real containerd, against Debian's mosquitto: py-mqtt (componentize-py 0.17.2
against spin-trigger-mqtt's p2 WIT) runs for each message on its topic and answers through outbound MQTT to a
subscriber of the test's, keeps its subscription through guest errors and a broker restart under the running task,
exits 0 on SIGTERM; an app with an HTTP and an MQTT trigger serves both; a bad [[trigger.mqtt]] or
[application.trigger.mqtt] fails `ctr run` at Create with the reason in ctr's error and in the container log."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.http_support import HttpTask, serving, wait_for_log
from tests.e2e.support import assert_no_leaks, wait_until
from tests.e2e.test_redis_trigger import ForegroundTask
from tests.mosquitto_support import Mosquitto, running_mosquitto, subscribed
from tests.unit.test_mqtt_trigger_app import connected_since_start, publish

pytestmark = pytest.mark.e2e

SUBSCRIBED = "spin: mqtt trigger: subscribed on mqtt://127.0.0.1:"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """mosquitto on the host's loopback (the tasks run with --net-host), restartable on its ports."""
    with running_mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture
def py_mqtt(containerd_21, images_21, http_apps, broker, tmp_path):
    """py-mqtt in the foreground, subscribed to `e2e/in` (QoS 1), answering on `e2e/out`."""
    image = images_21.wasm_image("py-mqtt", {"/": http_apps["py-mqtt"]}, ["/"])
    task_id = f"mqtt-{os.getpid() % 10_000}-{abs(hash(str(tmp_path))) % 10_000}"
    env = {"SPIN_VARIABLE_MQTT_PORT": str(broker.port), "SPIN_VARIABLE_TOPIC": "e2e/in",
           "SPIN_VARIABLE_REPLY_TOPIC": "e2e/out"}
    task = ForegroundTask(containerd_21, image, task_id, env, tmp_path)
    try:
        task.wait_for_log(SUBSCRIBED, timeout=90)
        yield task
    finally:
        task.remove()
        assert_no_leaks(containerd_21, [task_id])


def test_a_message_runs_the_component_guest_errors_keep_the_subscription_and_sigterm_exits_0(py_mqtt, broker):
    with subscribed(broker, ("e2e/out", 1)) as replies:
        publish(broker, "e2e/in", b"hello from mosquitto")
        answer = replies.next(20)
        assert (answer.topic, answer.payload) == ("e2e/out", b"e2e/in got hello from mosquitto"), py_mqtt.log()
        py_mqtt.wait_for_log("py-mqtt got 20 bytes on e2e/in")  # the guest's stdout is the container's
        publish(broker, "e2e/in", b"fail", b"trap", b"still here")
        assert replies.next(20).payload == b"e2e/in got still here", py_mqtt.log()
    log = py_mqtt.log()
    assert ("spin: py-mqtt: error: the handler returned error(py-mqtt was asked to fail) (message on MQTT topic "
            "'e2e/in' of mqtt://127.0.0.1:") in log
    assert "spin: py-mqtt: trap: " in log and log.count("the subscription goes on") == 2
    assert py_mqtt.sigterm() == 0, py_mqtt.log()
    # SIGTERM disconnected the trigger's client and the guest closed its outbound one
    assert wait_until(lambda: not connected_since_start(broker), timeout=10), connected_since_start(broker)


def test_a_restarted_broker_is_resubscribed_under_the_running_task(py_mqtt, broker):
    broker.restart(down_for=1.0)
    py_mqtt.wait_for_log("spin: mqtt trigger: lost mqtt://127.0.0.1:")
    py_mqtt.wait_for_log("spin: mqtt trigger: resubscribed on mqtt://127.0.0.1:", timeout=40)
    with subscribed(broker, ("e2e/out", 1)) as replies:
        publish(broker, "e2e/in", b"after the restart")
        assert replies.next(20).payload == b"e2e/in got after the restart", py_mqtt.log()
    assert py_mqtt.sigterm() == 0, py_mqtt.log()


def _mixed_app(http_apps, app_dir) -> None:
    """js-echo's wasm as an HTTP component and py-mqtt's as an MQTT component of one app."""
    app_dir.mkdir()
    shutil.copyfile(http_apps["js-echo"] / "app.wasm", app_dir / "echo.wasm")
    shutil.copyfile(http_apps["py-mqtt"] / "app.wasm", app_dir / "mqtt.wasm")
    manifest = (http_apps["py-mqtt"] / "spin.toml").read_text().replace('source = "app.wasm"', 'source = "mqtt.wasm"')
    (app_dir / "spin.toml").write_text(manifest + """
[[trigger.http]]
route = "/..."
component = "echo"

[component.echo]
source = "echo.wasm"
""")


def test_a_mixed_http_and_mqtt_app_serves_both(containerd_21, images_21, http_apps, broker, tmp_path):
    _mixed_app(http_apps, tmp_path / "mixed")
    image = images_21.wasm_image("mqtt-mixed", {"/": tmp_path / "mixed"}, ["/"])
    env = {"SPIN_VARIABLE_MQTT_PORT": str(broker.port), "SPIN_VARIABLE_TOPIC": "mixed/in",
           "SPIN_VARIABLE_REPLY_TOPIC": "mixed/out"}
    with serving(containerd_21, image, "mqtt-mixed", env) as task:
        assert task.get("/hello").text == "Hello from JS!"
        assert wait_for_log(task, SUBSCRIBED, timeout=30), task.log()
        with subscribed(broker, ("mixed/out", 1)) as replies:
            publish(broker, "mixed/in", b"to the mixed app")
            assert replies.next(20).payload == b"mixed/in got to the mixed app", task.log()
        assert "thread(s) running before the triggers fork" not in task.log()
        assert task.stop_task(), "SIGTERM did not stop both triggers"


BAD_TRIGGERS = {
    "bad-qos": ('qos = "1"\n', 'qos = "5"\n', '`qos` must be "0", "1" or "2"'),
    "no-keep-alive": ('keep_alive_interval = "30"\n', "", "`keep_alive_interval` is required"),
    "tls-broker": ('address = "mqtt://', 'address = "mqtts://', "mqtts:// brokers are not supported by this shim"),
    "bad-topic": ('topic = "{{ topic }}"\n', 'topic = "a/#/b"\n', "'#' must be a whole level, and the last one"),
    "unknown-key": ('qos = "1"\n', 'qos = "1"\nretain = "yes"\n', "unknown key(s) 'retain'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRIGGERS))
def test_bad_trigger_config_fails_create_with_the_reason(containerd_21, images_21, http_apps, tmp_path, case):
    old, new, needle = BAD_TRIGGERS[case]
    app_dir = tmp_path / "app"
    shutil.copytree(http_apps["py-mqtt"], app_dir)
    manifest = (app_dir / "spin.toml").read_text()
    assert old in manifest
    (app_dir / "spin.toml").write_text(manifest.replace(old, new, 1))
    image = images_21.wasm_image(f"py-mqtt-{case}", {"/": app_dir}, ["/"])
    task = HttpTask(containerd_21, image, f"mqtt-bad-{case}", env={"SPIN_VARIABLE_MQTT_PORT": "1883"})
    result = task.run(wait_ready=False)
    try:
        assert result.returncode != 0, "ctr run should have failed"
        assert needle in result.stderr, result.stderr
        assert wait_for_log(task, needle), task.log()
    finally:
        task.remove()
    assert_no_leaks(containerd_21, [task.task_id])
