"""Spin's outbound MQTT (``fermyon:spin/mqtt@2.0.0``): a guest's connection to an MQTT broker it may reach.

As in Spin (crates/factor-outbound-mqtt, rumqttc's MQTT 3.1.1 client):
- ``open(address, username, password, keep-alive)``: an address the component's ``allowed_outbound_hosts`` does
  not allow (``mqtt://host:port``, default port 1883) is ``connection-failed("address ... is not permitted")``;
  one rumqttc's ``MqttOptions::parse_url`` rejects is ``invalid-address``: a scheme other than ``mqtt``/``tcp``,
  no ``client_id`` query parameter, a query parameter it does not know, or a known one with a bad value. The
  username and password arguments are the CONNECT's (Spin calls ``set_credentials`` with them even when empty,
  so an anonymous broker sees an empty username). ``open`` does not connect: rumqttc connects when its event loop
  is first polled, which is in the first ``publish``.
- ``publish(topic, payload, qos)`` returns when rumqttc's does: QoS 0 once the PUBLISH is written to the socket,
  QoS 1 at the broker's PUBACK, QoS 2 at its PUBCOMP. A broker that cannot be reached, refuses the login
  (CONNACK not accepted) or drops the connection is ``connection-failed`` with the reason; an invalid topic
  (empty, or with ``+``/``#``) is ``other``. After a failure the next ``publish`` connects again.

Bounds: every socket operation ends by the request's deadline (connecting also within ``conn_timeout_secs``,
rumqttc's 5 s by default); at most MAX_OPEN_CONNECTIONS_PER_INSTANCE connections per instance (Spin's resource
table), each closed when the guest drops it or the request ends. Passwords never appear in errors or logs: the
password argument is never formatted, and a password in the address's userinfo is masked.

The protocol is paho-mqtt's (imported on the first ``publish``, 17-21 ms measured in a worker: the start path
never pays for it), driven from the request's thread by runtime.mqtt.pump, with no paho thread.

Differences from Spin: ``mqtts://`` (TLS) is ``invalid-address`` here; the keep-alive is capped at 65535 s (the
protocol's 16 bits; rumqttc truncates); a publish whose connection failed is not resent on the next connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from runtime.mqtt.pump import SUCCESS, pump_once

if TYPE_CHECKING:
    from collections.abc import Callable

    from runtime.spin.outbound import OutboundPolicy

#: The case names of ``fermyon:spin/mqtt@2.0.0``'s ``error`` variant.
MqttErrorKind = Literal["invalid-address", "too-many-connections", "connection-failed", "other"]

SCHEME = "mqtt"
DEFAULT_PORT = 1883
#: Spin's per-instance resource table of MQTT connections (spin_resource_table::Table::new(1024)).
MAX_OPEN_CONNECTIONS_PER_INSTANCE = 1024
#: rumqttc's default connection timeout (TCP connect + CONNACK), which ``conn_timeout_secs`` overrides.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: The CONNECT packet's keep-alive is 16 bits.
MAX_KEEP_ALIVE_S = 65535
#: WIT qos case -> MQTT QoS level.
QOS_LEVELS = {"at-most-once": 0, "at-least-once": 1, "exactly-once": 2}

#: rumqttc's MqttOptions::parse_url query parameters (MQTT 3.1.1 client) and how each value must parse; any other
#: parameter is OptionError::Unknown.
_U64 = (0, 2**64 - 1)
_QUERY_PARAMETERS: dict[str, tuple[int, int] | None] = {
    "keep_alive_secs": _U64, "clean_session": None, "max_incoming_packet_size_bytes": _U64,
    "max_outgoing_packet_size_bytes": _U64, "request_channel_capacity_num": _U64, "max_request_batch_num": _U64,
    "pending_throttle_usecs": _U64, "inflight_num": (0, 65535), "conn_timeout_secs": _U64,
}


class MqttError(Exception):
    """An MQTT call failed; ``kind`` is the WIT error case, ``message`` its payload / a description."""

    def __init__(self, kind: MqttErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: MqttErrorKind = kind
        self.message = message


@dataclass(frozen=True)
class MqttAddress:
    """What a guest's address asks for, as rumqttc reads it."""

    host: str
    port: int
    client_id: str
    clean_session: bool = True
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S


def masked(address: str) -> str:
    """``address`` without a password in its userinfo, for messages and logs.

    Everything between the user's ``:`` and the last ``@`` is hidden, as runtime.spin.mysql_outbound does: a
    password the guest did not percent-encode (a ``/`` or ``#`` in it) is hidden whole. An ``@`` that only comes
    after a ``?`` (``?client_id=me@home``) is the query's, not a userinfo's, and the address is shown as it is.
    """
    scheme, separator, rest = address.partition("://")
    first_at = rest.find("@")
    if not separator or first_at < 0 or "?" in rest[:first_at]:
        return address
    userinfo, _, after = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{after}"


def parse_address(address: str) -> MqttAddress:
    """rumqttc's ``MqttOptions::parse_url`` rules; ``invalid-address`` (with the reason) if it would refuse."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise MqttError("invalid-address", f"{masked(address)}: {exc}") from None
    if parts.scheme not in ("mqtt", "tcp"):
        why = "TLS (mqtts) is not supported by this shim" if parts.scheme in ("mqtts", "ssl") else \
            "the scheme must be mqtt://"
        raise MqttError("invalid-address", f"{masked(address)}: {why}")
    if not parts.hostname:
        raise MqttError("invalid-address", f"{masked(address)}: the address names no host")
    query = parse_qsl(parts.query, keep_blank_values=True)
    values: dict[str, str] = {}
    for name, value in query:
        values[name] = value  # a repeated parameter: the last one wins, as in rumqttc's HashMap
    if "client_id" not in values:
        raise MqttError("invalid-address", f"{masked(address)}: the address has no client_id query parameter "
                        "(e.g. mqtt://host:1883?client_id=app-1)")
    client_id = values.pop("client_id")
    for name, value in values.items():
        if name not in _QUERY_PARAMETERS:
            raise MqttError("invalid-address", f"{masked(address)}: unknown query parameter {name!r}")
        bounds = _QUERY_PARAMETERS[name]
        if bounds is None:
            valid = value in ("true", "false")
        else:
            valid = value.isascii() and value.isdigit() and bounds[0] <= int(value) <= bounds[1]
        if not valid:
            raise MqttError("invalid-address", f"{masked(address)}: bad value for {name}")
    connect_timeout = float(values["conn_timeout_secs"]) if "conn_timeout_secs" in values else \
        DEFAULT_CONNECT_TIMEOUT_S
    return MqttAddress(host=parts.hostname, port=port or DEFAULT_PORT, client_id=client_id,
                       clean_session=values.get("clean_session", "true") == "true",
                       connect_timeout=connect_timeout)


def check_address(address: str, policy: OutboundPolicy) -> None:
    """Spin's allow-list check (``check_url(address, "mqtt")``); an address it cannot read is not allowed either."""
    if not policy.allows(address, default_scheme=SCHEME):
        raise MqttError("connection-failed", f"address {masked(address)} is not permitted")


class MqttConnection:
    """One guest connection: its settings at ``open``, a paho client from the first ``publish`` on."""

    def __init__(self, address: str, username: str, password: str, keep_alive_s: int,
                 policy: OutboundPolicy) -> None:
        check_address(address, policy)
        self.address = address
        self.target = parse_address(address)
        self._username = username
        self._password = password
        self._keep_alive = min(max(0, keep_alive_s), MAX_KEEP_ALIVE_S)
        self._client: Any = None
        #: The CONNACK's reason when the broker refused the login (set by paho's on_connect).
        self._refused: str | None = None

    def __repr__(self) -> str:  # never the password
        return f"MqttConnection({masked(self.address)!r})"

    def publish(self, topic: str, payload: bytes, qos: int, deadline: float) -> None:
        client = self._connected(deadline)
        try:
            info = client.publish(topic, payload, qos)
        except ValueError as exc:  # paho's check of the topic / payload size, as rumqttc's client request error
            raise MqttError("other", f"publish to {topic!r}: {exc}") from None
        if info.rc != SUCCESS and not info.is_published():
            self._fail(f"publish to {topic!r}: {_error_text(info.rc)}")
        self._drive(info.is_published, deadline, f"publish to {topic!r} (QoS {qos})")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        sock = client.socket()
        try:
            if sock is not None and client.is_connected():
                client.disconnect()  # DISCONNECT, so the broker ends the session cleanly (no will, no error log)
        except OSError:
            pass
        finally:
            if sock is not None:
                sock.close()

    # ------------------------------------------------------------------------------------------------ internals

    def _connected(self, deadline: float) -> Any:
        if self._client is not None and self._client.is_connected():
            return self._client
        self.close()
        from paho.mqtt.client import Client, MQTTv311  # noqa: PLC0415 - only apps that publish pay for the import
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        client = Client(CallbackAPIVersion.VERSION2, client_id=self.target.client_id,
                        clean_session=self.target.clean_session, protocol=MQTTv311)
        client.username_pw_set(self._username, self._password)
        self._refused = None

        def on_connect(_client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
            if reason.is_failure:
                self._refused = str(reason)

        client.on_connect = on_connect
        connect_deadline = min(deadline, time.monotonic() + self.target.connect_timeout)
        client.connect_timeout = max(0.001, connect_deadline - time.monotonic())
        self._client = client
        try:
            client.connect(self.target.host, self.target.port, keepalive=self._keep_alive)
        except (OSError, ValueError) as exc:
            self._fail(str(exc) or type(exc).__name__)
        self._drive(client.is_connected, connect_deadline, "the broker's CONNACK")
        return client

    def _drive(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        """Pump the client until ``done()``; connection-failed when the connection ends or the deadline passes."""
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"timed out waiting for {what}")
            rc = pump_once(self._client, min(left, 1.0))
            if rc != SUCCESS and not done():
                if self._refused is not None:
                    self._fail(f"connection refused by the broker: {self._refused}")
                self._fail(f"{_error_text(rc)} while waiting for {what}")

    def _fail(self, reason: str) -> None:
        self.close()
        raise MqttError("connection-failed", f"{masked(self.address)}: {reason}")


def _error_text(rc: int) -> str:
    from paho.mqtt.client import error_string  # noqa: PLC0415 - paho is loaded once a client exists

    return error_string(rc)
