"""Client spans of Spin's host APIs, with Spin's names and attributes, added where host functions are linked.

Spin instruments each host call with ``#[instrument(name = ..., fields(otel.kind = "client", ...))]``
(factor-key-value host.rs, factor-outbound-redis, -mysql, -pg, -mqtt host.rs, factor-sqlite host.rs,
factor-outbound-http wasi.rs); a span's exported name is its ``otel.name`` when one is given (Redis: the command,
``GET``; outbound HTTP: the method), else the instrument name. ``SPANS`` is that table, keyed by interface (without
version) and WIT function name; ``wrap`` (runtime.host.registry's link hook, installed by sdk.prepare only when
telemetry is on) wraps exactly those functions, so with telemetry off linking and calls are what they were.

The parent is the request's ``execute_wasm_component`` span, current in the guest's thread (host functions run on
it). An ``Err`` result marks the span as an error with the error's case as ``error.type``; a trap (an exception)
is recorded by the SDK. Addresses of ``open`` calls give ``server.address``, ``server.port`` and ``db.namespace``
as Spin's ``record_address_fields`` does (host, port or 0, path): never the user or password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

import runtime.telemetry as state
from runtime.host.values import Err
from runtime.telemetry.marks import HostFunc, mark_error
from runtime.telemetry.outbound_http import traced_handle
#: Attributes of a span from the call's arguments (after ctx).
Attrs = Callable[[tuple[Any, ...]], dict[str, Any]]


def _address(db_system: str) -> Attrs:
    def attrs(args: tuple[Any, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {"db.system.name": db_system}
        if args and isinstance(args[0], str):
            try:
                url = urlsplit(args[0])
                out["server.address"] = url.hostname or ""
                out["server.port"] = url.port or 0
            except ValueError:
                return out
            out["db.namespace"] = url.path.lstrip("/")
        return out

    return attrs


def _db(db_system: str) -> Attrs:
    return lambda _args: {"db.system.name": db_system}


def _redis_command(args: tuple[Any, ...]) -> dict[str, Any]:
    return {"db.system.name": "redis"}


def _none(_args: tuple[Any, ...]) -> dict[str, Any]:
    return {}


#: (span name, kind, attributes from the arguments); a name of None takes the Redis command (first argument
#: after the connection) as Spin's ``otel.name = format!("{}", command)``.
Spec = tuple[str | None, SpanKind, Attrs]

_CLIENT = SpanKind.CLIENT
_SPIN_KV = {f"[method]store.{op}": (f"spin_key_value.{op.replace('-', '_')}", _CLIENT, _none)
            for op in ("get", "set", "delete", "exists", "get-keys")}
_SPIN_KV["[static]store.open"] = ("spin_key_value.open", _CLIENT, _none)
_WASI_KV = {f"[method]bucket.{op}": (f"wasi_key_value.{op.replace('-', '_')}", _CLIENT, _none)
            for op in ("get", "set", "delete", "exists", "list-keys")}
_WASI_KV["open"] = ("wasi_key_value.open", _CLIENT, _none)
_REDIS: dict[str, Spec] = {f"[method]connection.{op}": (name, _CLIENT, _redis_command) for op, name in (
    ("publish", "PUBLISH"), ("get", "GET"), ("set", "SET"), ("incr", "INCRBY"), ("del", "DEL"), ("sadd", "SADD"),
    ("smembers", "SMEMBERS"), ("srem", "SREM"))}
_REDIS["[method]connection.execute"] = (None, _CLIENT, _redis_command)
_REDIS["[static]connection.open"] = ("spin_outbound_redis.open_connection", _CLIENT, _address("redis"))


def _rdbms(prefix: str, db_system: str) -> dict[str, Spec]:
    return {"[static]connection.open": (f"{prefix}.open", _CLIENT, _address(db_system)),
            "[method]connection.execute": (f"{prefix}.execute", _CLIENT, _db(db_system)),
            "[method]connection.query": (f"{prefix}.query", _CLIENT, _db(db_system))}


_SQLITE: dict[str, Spec] = {"[static]connection.open": ("spin_sqlite.open", _CLIENT, _db("sqlite")),
                            "[method]connection.execute": ("spin_sqlite.execute", _CLIENT, _db("sqlite"))}
_MQTT: dict[str, Spec] = {"[static]connection.open": ("spin_outbound_mqtt.open_connection", _CLIENT, _none),
                          "[method]connection.publish": ("spin_outbound_mqtt.publish", SpanKind.PRODUCER, _none)}

SPANS: dict[str, dict[str, Spec]] = {
    "fermyon:spin/key-value": _SPIN_KV,
    "wasi:keyvalue/store": _WASI_KV,
    "wasi:keyvalue/atomics": {"increment": ("spin_key_value.increment", _CLIENT, _none),
                              "[static]cas.new": ("wasi_key_value_cas.new", _CLIENT, _none),
                              "[method]cas.current": ("wasi_key_value_cas.current", _CLIENT, _none),
                              "swap": ("spin_key_value.swap", _CLIENT, _none)},
    "wasi:keyvalue/batch": {"get-many": ("spin_key_value.get_many", _CLIENT, _none),
                            "set-many": ("spin_key_value.set_many", _CLIENT, _none),
                            "delete-many": ("spin_key_value.delete_many", _CLIENT, _none)},
    "fermyon:spin/redis": _REDIS,
    "fermyon:spin/mysql": _rdbms("spin_outbound_mysql", "mysql"),
    "fermyon:spin/postgres": _rdbms("spin_outbound_pg", "postgresql"),
    "spin:postgres/postgres": _rdbms("spin_outbound_pg", "postgresql"),
    "fermyon:spin/sqlite": _SQLITE,
    "spin:sqlite/sqlite": _SQLITE,
    "fermyon:spin/mqtt": _MQTT,
}

OUTGOING_HANDLER = "wasi:http/outgoing-handler"


def wrap(interface: str, func: str, impl: HostFunc) -> HostFunc:
    """The link hook: ``impl`` itself, or ``impl`` inside its Spin span when SPANS (or outbound HTTP) names it."""
    if interface == OUTGOING_HANDLER and func == "handle":
        return traced_handle(impl)
    spec = SPANS.get(interface, {}).get(func)
    if spec is None:
        return impl
    name, kind, attrs = spec
    is_method = func.startswith("[method]")

    def traced(ctx: Any, *args: Any) -> Any:
        telemetry = state.active
        if telemetry is None:  # a process that never started telemetry (the instance process before its workers)
            return impl(ctx, *args)
        params = args[1:] if is_method else args
        span_name = name if name is not None else _command_name(params)
        with telemetry.tracer.start_as_current_span(span_name, kind=kind, attributes=attrs(params)) as span:
            result = impl(ctx, *args)
            if isinstance(result, Err):
                mark_error(span, result.value)
            return result

    traced.__wrapped__ = impl  # type: ignore[attr-defined]
    return traced


def _command_name(params: tuple[Any, ...]) -> str:
    command = params[0] if params and isinstance(params[0], str) else ""
    return command or "spin_outbound_redis.execute"
