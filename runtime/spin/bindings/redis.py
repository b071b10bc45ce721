"""``fermyon:spin/redis@2.0.0``: the ``connection`` resource over runtime.spin.redis_outbound.

``error`` is ``invalid-address | too-many-connections | type-error | other(string)``, returned as Spin returns
it (see runtime.spin.redis_outbound). Connections are closed when the guest drops them and, at the latest, when
the request ends (``ctx.cleanups``), so no socket outlives the request that opened it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, RequestConnections, request_connections, services_of
from runtime.spin.redis_outbound import MAX_OPEN_CONNECTIONS_PER_INSTANCE, RedisConnection, RedisError

if TYPE_CHECKING:
    from collections.abc import Callable

    from runtime.host.context import RequestContext

_OPEN_KEY = "spin.redis.open-connections"


class GuestRedis:
    """A guest's ``connection`` handle (its own class, so no other resource's rep is taken for one)."""

    __slots__ = ("connection",)

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection


def _open_connections(ctx: RequestContext) -> RequestConnections:
    return request_connections(ctx, _OPEN_KEY)


def _released(ctx: RequestContext, handle: GuestRedis) -> None:
    _open_connections(ctx).release(handle.connection)


redis = REGISTRY.interface("fermyon:spin/redis", versions=("2.0.0",))
CONNECTION = redis.resource("connection", on_drop=_released)


def error_value(exc: RedisError) -> Variant:
    return Variant(exc.kind, exc.message if exc.kind == "other" else None)


@redis.func("[static]connection.open")
def open_connection(ctx: RequestContext, address: str) -> Ok[Any] | Err[Variant]:
    opened = _open_connections(ctx)
    if len(opened.connections) >= MAX_OPEN_CONNECTIONS_PER_INSTANCE:
        return Err(Variant("too-many-connections"))
    try:
        policy = services_of(ctx).outbound_policy(ctx.config.id)
        connection = RedisConnection(address, policy, ctx.remaining())
    except RedisError as exc:
        if exc.kind == "invalid-address":
            ctx.notes.append(f"fermyon:spin/redis: {exc.message}")
        return Err(error_value(exc))
    except NoServices as exc:
        return Err(Variant("other", str(exc)))
    opened.connections.append(connection)
    return Ok(ctx.new(CONNECTION, GuestRedis(connection)))


def _call(ctx: RequestContext, rep: int, op: Callable[[RedisConnection], Any]) -> Ok[Any] | Err[Variant]:
    try:
        return Ok(op(ctx.table.get(rep, GuestRedis).connection))
    except RedisError as exc:
        return Err(error_value(exc))


@redis.func("[method]connection.publish")
def publish(ctx: RequestContext, rep: int, channel: str, payload: bytes) -> Ok[None] | Err[Variant]:
    result = _call(ctx, rep, lambda c: c.publish(channel, payload))
    return OK_EMPTY if isinstance(result, Ok) else result


@redis.func("[method]connection.get")
def get(ctx: RequestContext, rep: int, key: str) -> Ok[bytes | None] | Err[Variant]:
    return _call(ctx, rep, lambda c: c.get(key))


@redis.func("[method]connection.set")
def set_(ctx: RequestContext, rep: int, key: str, value: bytes) -> Ok[None] | Err[Variant]:
    result = _call(ctx, rep, lambda c: c.set(key, value))
    return OK_EMPTY if isinstance(result, Ok) else result


@redis.func("[method]connection.incr")
def incr(ctx: RequestContext, rep: int, key: str) -> Ok[int] | Err[Variant]:
    return _call(ctx, rep, lambda c: c.incr(key))


@redis.func("[method]connection.del")
def delete(ctx: RequestContext, rep: int, keys: list[str]) -> Ok[int] | Err[Variant]:
    return _call(ctx, rep, lambda c: c.delete(keys))


@redis.func("[method]connection.sadd")
def sadd(ctx: RequestContext, rep: int, key: str, values: list[str]) -> Ok[int] | Err[Variant]:
    return _call(ctx, rep, lambda c: c.sadd(key, values))


@redis.func("[method]connection.smembers")
def smembers(ctx: RequestContext, rep: int, key: str) -> Ok[list[str]] | Err[Variant]:
    return _call(ctx, rep, lambda c: c.smembers(key))


@redis.func("[method]connection.srem")
def srem(ctx: RequestContext, rep: int, key: str, values: list[str]) -> Ok[int] | Err[Variant]:
    return _call(ctx, rep, lambda c: c.srem(key, values))


@redis.func("[method]connection.execute")
def execute(ctx: RequestContext, rep: int, command: str, arguments: list[Variant]) -> Ok[list[Variant]] | Err[Variant]:
    result = _call(ctx, rep, lambda c: c.execute(command, [a.payload for a in arguments]))
    if isinstance(result, Err):
        return result
    return Ok([_reply(value) for value in result.value])


def _reply(value: None | int | bytes) -> Variant:
    if value is None:
        return Variant("nil", None)
    if isinstance(value, int):
        return Variant("int64", value)
    return Variant("binary", value)
