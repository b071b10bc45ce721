"""``fermyon:spin/mqtt@2.0.0``: the ``connection`` resource over runtime.spin.mqtt_outbound.

``error`` is ``invalid-address | too-many-connections | connection-failed(string) | other(string)``, returned as
Spin returns it (see runtime.spin.mqtt_outbound). Connections are closed when the guest drops them and, at the
latest, when the request ends (``ctx.cleanups``), so no socket outlives the request that opened it; every
``publish`` ends by the request's deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, RequestConnections, request_connections, services_of
from runtime.spin.mqtt_outbound import MAX_OPEN_CONNECTIONS_PER_INSTANCE, QOS_LEVELS, MqttConnection, MqttError

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

_OPEN_KEY = "spin.mqtt.open-connections"


class GuestMqtt:
    """A guest's ``connection`` handle (its own class, so no other resource's rep is taken for one)."""

    __slots__ = ("connection",)

    def __init__(self, connection: MqttConnection) -> None:
        self.connection = connection


def _open_connections(ctx: RequestContext) -> RequestConnections:
    return request_connections(ctx, _OPEN_KEY)


def _released(ctx: RequestContext, handle: GuestMqtt) -> None:
    _open_connections(ctx).release(handle.connection)


mqtt = REGISTRY.interface("fermyon:spin/mqtt", versions=("2.0.0",))
CONNECTION = mqtt.resource("connection", on_drop=_released)


def error_value(exc: MqttError) -> Variant:
    has_message = exc.kind in ("connection-failed", "other")
    return Variant(exc.kind, exc.message if has_message else None)


@mqtt.func("[static]connection.open")
def open_connection(ctx: RequestContext, address: str, username: str, password: str,
                    keep_alive_interval_in_secs: int) -> Ok[Any] | Err[Variant]:
    opened = _open_connections(ctx)
    if len(opened.connections) >= MAX_OPEN_CONNECTIONS_PER_INSTANCE:
        return Err(Variant("too-many-connections"))
    try:
        policy = services_of(ctx).outbound_policy(ctx.config.id)
        connection = MqttConnection(address, username, password, keep_alive_interval_in_secs, policy)
    except MqttError as exc:
        ctx.notes.append(f"fermyon:spin/mqtt: {exc.message}")
        return Err(error_value(exc))
    except NoServices as exc:
        return Err(Variant("other", str(exc)))
    opened.connections.append(connection)
    return Ok(ctx.new(CONNECTION, GuestMqtt(connection)))


@mqtt.func("[method]connection.publish")
def publish(ctx: RequestContext, rep: int, topic: str, payload: bytes, qos: str) -> Ok[None] | Err[Variant]:
    connection = ctx.table.get(rep, GuestMqtt).connection
    try:
        connection.publish(topic, payload, QOS_LEVELS[qos], ctx.deadline)
    except MqttError as exc:
        return Err(error_value(exc))
    return OK_EMPTY
