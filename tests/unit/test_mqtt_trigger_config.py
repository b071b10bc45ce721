"""[application.trigger.mqtt] and [[trigger.mqtt]] as spin-trigger-mqtt reads them: every key, templates over the
application variables, and a clear error (naming the table and the key, never the password) for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import ManifestError
from runtime.manifest import parse_manifest
from runtime.mqtt.trigger_config import BrokerSettings, parse_mqtt_triggers, subscriptions, topic_filter_problem

BROKER = """
[application.trigger.mqtt]
address = "mqtt://{{ host }}:1884"
username = "admin"
password = "{{ password }}"
keep_alive_interval = "30"
"""

TRIGGERS = """
[[trigger.mqtt]]
id = "trigger-mqtt-c01"
component = "mqtt-c01"
topic = "messages-{{ suffix }}"
qos = "1"

[[trigger.mqtt]]
component = "mqtt-c02"
topic = "sensors/+/temp/#"
qos = "0"

[component.mqtt-c01]
source = "a.wasm"
[component.mqtt-c02]
source = "b.wasm"
"""

VALUES = {"host": "broker.test", "password": "pa55", "suffix": "in01"}


def manifest(tmp_path: Path, broker: str = BROKER, triggers: str = TRIGGERS):
    text = f"""spin_manifest_version = 2
[application]
name = "mqtt-app"
{broker}
[variables]
host = {{ default = "x" }}
password = {{ required = true, secret = true }}
suffix = {{ default = "x" }}
{triggers}"""
    return parse_manifest(text, tmp_path / "spin.toml")


def value_of(name: str) -> str:
    if name not in VALUES:
        raise LookupError(f"no provider resolved required variable {name!r}")
    return VALUES[name]


def test_settings_and_triggers_are_parsed_with_their_templates_resolved(tmp_path: Path):
    parsed = parse_mqtt_triggers(manifest(tmp_path), value_of)
    assert parsed is not None
    broker, triggers = parsed
    assert broker == BrokerSettings("mqtt://broker.test:1884", "broker.test", 1884, "admin", "pa55", 30)
    assert "pa55" not in repr(broker)
    assert [(t.trigger_id, t.component_id, t.topic, t.qos) for t in triggers] == [
        ("trigger-mqtt-c01", "mqtt-c01", "messages-in01", 1), ("mqtt-trigger-2", "mqtt-c02", "sensors/+/temp/#", 0)]
    subs = subscriptions(broker, triggers)
    assert [s.topics for s in subs] == [(("messages-in01", 1),), (("sensors/+/temp/#", 0),)]  # one client each


def test_an_app_without_mqtt_triggers_has_no_mqtt_config(tmp_path: Path):
    text = 'spin_manifest_version = 2\n[application]\nname = "a"\n[[trigger.http]]\nroute = "/..."\n' \
           'component = "c"\n[component.c]\nsource = "c.wasm"\n'
    assert parse_mqtt_triggers(parse_manifest(text, tmp_path / "spin.toml"), value_of) is None


def test_defaults_port_and_bare_host_port(tmp_path: Path):
    for address, expected in (("mqtt://localhost", ("localhost", 1883)), ("tcp://10.0.0.1:1999", ("10.0.0.1", 1999)),
                              ("localhost:1885", ("localhost", 1885))):
        broker = BROKER.replace('"mqtt://{{ host }}:1884"', f'"{address}"')
        settings, _ = parse_mqtt_triggers(manifest(tmp_path, broker), value_of)
        assert (settings.host, settings.port) == expected


@pytest.mark.parametrize(("broker", "triggers", "message"), [
    ("", TRIGGERS, r"\[application.trigger.mqtt\] is required by \[\[trigger.mqtt\]\]"),
    (BROKER.replace('keep_alive_interval = "30"\n', ""), TRIGGERS,
     r"\[application.trigger.mqtt\]: `keep_alive_interval` is required"),
    (BROKER + 'client_id = "x"\n', TRIGGERS, r"\[application.trigger.mqtt\]: unknown key\(s\) 'client_id'"),
    (BROKER.replace('"30"', "30"), TRIGGERS, r"`keep_alive_interval` must be a string.*got int"),
    (BROKER.replace('"30"', '"70000"'), TRIGGERS, r"`keep_alive_interval` must be a number of seconds"),
    (BROKER.replace('"mqtt://{{ host }}:1884"', '"mqtts://broker:8883"'), TRIGGERS, r"`address`.*mqtts:// brokers"),
    (BROKER.replace('"mqtt://{{ host }}:1884"', '"http://broker"'), TRIGGERS, r"`address` 'http://broker' must be"),
    (BROKER.replace('"mqtt://{{ host }}:1884"', '"mqtt://{{ nope }}"'), TRIGGERS,
     r"\[application.trigger.mqtt\]: `address`: no provider resolved required variable 'nope'"),
    (BROKER, TRIGGERS.replace('qos = "1"', 'qos = "3"'), r"\[\[trigger.mqtt\]\] 'trigger-mqtt-c01': `qos` must be"),
    (BROKER, TRIGGERS.replace('qos = "1"', "qos = 1"), r"'trigger-mqtt-c01': `qos` must be a string"),
    (BROKER, TRIGGERS.replace('qos = "1"\n', ""), r"'trigger-mqtt-c01': `qos` is required"),
    (BROKER, TRIGGERS.replace('topic = "messages-{{ suffix }}"', 'topic = "a/#/b"'), r"`topic` 'a/#/b': '#' must"),
    (BROKER, TRIGGERS.replace('topic = "messages-{{ suffix }}"', 'topic = ""'), r"`topic` '': a topic filter cannot"),
    (BROKER, TRIGGERS.replace('qos = "0"', 'qos = "0"\nchannel = "x"'), r"'mqtt-trigger-2': unknown key\(s\) 'channel'"),
])
def test_each_mistake_is_a_clear_error_naming_the_table_and_key(tmp_path: Path, broker, triggers, message):
    with pytest.raises(ManifestError, match=message):
        parse_mqtt_triggers(manifest(tmp_path, broker, triggers), value_of)


def test_a_password_is_never_in_an_error(tmp_path: Path):
    literal = BROKER.replace('"{{ password }}"', '"hunter2{{"')  # a malformed template holding a literal secret
    with pytest.raises(ManifestError) as error:
        parse_mqtt_triggers(manifest(tmp_path, literal), value_of)
    assert "`password`" in str(error.value) and "hunter2" not in str(error.value)
    as_number = BROKER.replace('"{{ password }}"', "123456")
    with pytest.raises(ManifestError) as error:
        parse_mqtt_triggers(manifest(tmp_path, as_number), value_of)
    assert "`password` must be a string" in str(error.value) and "123456" not in str(error.value)


def test_topic_filters_follow_mqtt_rules():
    assert topic_filter_problem("a/+/b/#") is None and topic_filter_problem("#") is None
    assert topic_filter_problem("+") is None and topic_filter_problem("/leading/slash") is None
    assert topic_filter_problem("a+") and topic_filter_problem("a/b#") and topic_filter_problem("#/a")
    assert topic_filter_problem("a\x00b")
