"""``[application.trigger.mqtt]`` and ``[[trigger.mqtt]]`` as spin-trigger-mqtt reads them.

spin-trigger-mqtt (src/lib.rs, ``TriggerMetadata`` / ``ComponentConfig``, both ``deny_unknown_fields``, every value
a string since "deserialize all trigger metadata as strings"):

* ``[application.trigger.mqtt]``: ``address`` (the broker, ``mqtt://host:1883``), ``username``, ``password``
  (empty strings for an anonymous login) and ``keep_alive_interval`` (seconds, a string such as ``"30"``), all
  four required; ``address``, ``username`` and ``password`` are templates over the application variables
  (``password = "{{ mqtt_password }}"``), resolved once at start;
* each ``[[trigger.mqtt]]``: ``component``, ``topic`` (a template too; a topic filter, ``+`` and ``#`` allowed) and
  ``qos`` (``"0"``, ``"1"`` or ``"2"``);
* each trigger gets its own connection to the broker (``run_listener`` per component config): see
  ``subscriptions``.

Checked here, at task Create, where spin-trigger-mqtt fails only at start or at its first connection: a missing
or unknown key (the message names the table and the key), a value that is not a string, a template naming an
undeclared variable or one without a value, an address that is not ``mqtt://`` / ``tcp://`` with a host (TLS and
WebSocket brokers are not supported by this shim), a keep-alive or QoS out of range, and a topic filter MQTT
rejects. Pure: manifest model and a variable resolver in, plain data out; the password is never shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from runtime.errors import ManifestError
from runtime.manifest import Manifest, Trigger
from runtime.spin.template import Template, TemplateError
from runtime.unknown_keys import unknown_keys_phrase

MQTT_TRIGGER = "mqtt"
DEFAULT_PORT = 1883
#: The CONNECT packet's keep-alive is 16 bits.
MAX_KEEP_ALIVE_S = 65535
_METADATA_KEYS = ("address", "username", "password", "keep_alive_interval")
#: ``[[trigger.mqtt]]`` keys besides ``id`` and ``component`` (runtime.manifest takes those two out).
_TRIGGER_KEYS = ("topic", "qos")
_SCHEMES = {"mqtt", "tcp"}
_UNSUPPORTED_SCHEMES = {"mqtts", "ssl", "ws", "wss"}


@dataclass(frozen=True)
class BrokerSettings:
    """``[application.trigger.mqtt]``, its templates resolved."""

    #: As written after resolution (for messages); holds no password (that is a key of its own).
    address: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    keep_alive_s: int = 30


@dataclass(frozen=True)
class MqttTriggerConfig:
    """One ``[[trigger.mqtt]]``, its topic resolved."""

    trigger_id: str
    component_id: str
    topic: str
    qos: int


@dataclass(frozen=True)
class Subscription:
    """One connection to the broker and the topic filters it subscribes to, each with its QoS."""

    broker: BrokerSettings
    #: (topic filter, QoS), in manifest order.
    topics: tuple[tuple[str, int], ...]
    #: The triggers this connection serves (for messages), with their components.
    triggers: tuple[MqttTriggerConfig, ...] = ()


def parse_mqtt_triggers(manifest: Manifest, value_of: Callable[[str], str]
                        ) -> tuple[BrokerSettings, list[MqttTriggerConfig]] | None:
    """The broker settings and every ``[[trigger.mqtt]]`` of ``manifest`` (None when it has none), resolved with
    ``value_of`` (an application variable's value by name, raising LookupError with the reason when it has
    none). Raises ManifestError."""
    triggers = manifest.triggers_of_type(MQTT_TRIGGER)
    if not triggers:
        return None
    broker = parse_broker_settings(manifest, value_of)
    return broker, [_parse_trigger(manifest, trigger, value_of) for trigger in triggers]


def subscriptions(broker: BrokerSettings, triggers: list[MqttTriggerConfig]) -> list[Subscription]:
    """One Subscription per trigger, as spin-trigger-mqtt opens one client per ``[[trigger.mqtt]]``."""
    return [Subscription(broker, ((t.topic, t.qos),), (t,)) for t in triggers]


def parse_broker_settings(manifest: Manifest, value_of: Callable[[str], str]) -> BrokerSettings:
    where = f"{manifest.path}: [application.trigger.mqtt]"
    metadata = manifest.application.trigger_options.get(MQTT_TRIGGER)
    if metadata is None:
        raise ManifestError(f"{where} is required by [[trigger.mqtt]]: it names the broker (address, username, "
                            "password, keep_alive_interval)")
    unknown = sorted(set(metadata) - set(_METADATA_KEYS))
    if unknown:
        raise ManifestError(f"{where}: {unknown_keys_phrase(unknown, _METADATA_KEYS)} "
                            f"(known: {', '.join(_METADATA_KEYS)})")
    missing = [key for key in _METADATA_KEYS if key not in metadata]
    if missing:
        raise ManifestError(f"{where}: `{missing[0]}` is required (spin-trigger-mqtt needs all of "
                            f"{', '.join(_METADATA_KEYS)}; empty username and password log in anonymously)")
    address = _resolve(where, "address", metadata["address"], value_of)
    host, port = _parse_address(where, address)
    username = _resolve(where, "username", metadata["username"], value_of)
    password = _resolve(where, "password", metadata["password"], value_of, secret=True)
    keep_alive = _string(where, "keep_alive_interval", metadata["keep_alive_interval"])
    if not (keep_alive.isascii() and keep_alive.isdigit()) or int(keep_alive) > MAX_KEEP_ALIVE_S:
        raise ManifestError(f"{where}: `keep_alive_interval` must be a number of seconds from \"0\" to "
                            f"\"{MAX_KEEP_ALIVE_S}\" (a string, e.g. \"30\"); got {keep_alive!r}")
    return BrokerSettings(address, host, port, username, password, int(keep_alive))


def _parse_trigger(manifest: Manifest, trigger: Trigger, value_of: Callable[[str], str]) -> MqttTriggerConfig:
    where = f"{manifest.path}: [[trigger.mqtt]] {trigger.id!r}"
    config = dict(trigger.config)
    unknown = sorted(set(config) - set(_TRIGGER_KEYS))
    if unknown:
        raise ManifestError(f"{where}: {unknown_keys_phrase(unknown, (*_TRIGGER_KEYS, 'component'))} "
                            "(known: component, topic, qos)")
    if trigger.component is None:
        raise ManifestError(f"{where}: names no `component` (the component that handles the topic's messages)")
    for key in _TRIGGER_KEYS:
        if key not in config:
            raise ManifestError(f"{where}: `{key}` is required")
    topic = _resolve(where, "topic", config["topic"], value_of)
    problem = topic_filter_problem(topic)
    if problem:
        raise ManifestError(f"{where}: `topic` {topic!r}: {problem}")
    qos = _string(where, "qos", config["qos"])
    if qos not in ("0", "1", "2"):
        raise ManifestError(f"{where}: `qos` must be \"0\", \"1\" or \"2\" (a string); got {qos!r}")
    return MqttTriggerConfig(trigger.id, trigger.component, topic, int(qos))


def topic_filter_problem(topic: str) -> str | None:
    """Why MQTT 3.1.1 (section 4.7) rejects ``topic`` as a subscription filter; None when it is valid."""
    if not topic:
        return "a topic filter cannot be empty"
    if "\x00" in topic:
        return "a topic filter cannot contain U+0000"
    if len(topic.encode("utf-8")) > 65535:
        return "a topic filter is at most 65535 bytes"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level, and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _parse_address(where: str, address: str) -> tuple[str, int]:
    text = address if "://" in address else f"tcp://{address}"  # paho's URI rules: a bare host:port is tcp
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ManifestError(f"{where}: `address` {address!r}: {exc}") from None
    if parts.scheme in _UNSUPPORTED_SCHEMES:
        raise ManifestError(f"{where}: `address` {address!r}: {parts.scheme}:// brokers are not supported by this "
                            "shim (use mqtt://host:port)")
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ManifestError(f"{where}: `address` {address!r} must be mqtt://host[:port] (default port "
                            f"{DEFAULT_PORT})")
    if parts.username or parts.password:
        raise ManifestError(f"{where}: `address` must not carry credentials; use `username` and `password`")
    return parts.hostname, port or DEFAULT_PORT


def _string(where: str, key: str, raw: object, secret: bool = False) -> str:
    if not isinstance(raw, str):
        example = "" if secret else f" (e.g. {key} = \"{raw}\")"
        raise ManifestError(f"{where}: `{key}` must be a string, as spin-trigger-mqtt reads it{example}; got "
                            f"{type(raw).__name__}")
    return raw


def _resolve(where: str, key: str, raw: object, value_of: Callable[[str], str], secret: bool = False) -> str:
    """A ``{{ variable }}`` template as Spin's ``resolve_expression`` renders it; ManifestError naming the key.
    For a ``secret`` key the message never quotes the text (a literal password may be in it)."""
    text = _string(where, key, raw, secret)
    try:
        return Template.parse(text).render(value_of)
    except TemplateError as exc:
        raise ManifestError(f"{where}: `{key}`: {'a malformed {{ }} template' if secret else exc}") from None
    except LookupError as exc:
        reason = exc.args[0] if exc.args else str(exc)
        raise ManifestError(f"{where}: `{key}`: {reason}") from None


__all__ = ["MQTT_TRIGGER", "BrokerSettings", "MqttTriggerConfig", "Subscription", "parse_broker_settings",
           "parse_mqtt_triggers", "subscriptions", "topic_filter_problem"]
